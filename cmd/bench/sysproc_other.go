//go:build !linux

package main

import "syscall"

// sysProcAttr has no parent-death signal outside Linux: Close is the only
// way the nodes are stopped.
func sysProcAttr() *syscall.SysProcAttr { return nil }
