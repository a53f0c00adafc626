package main

import "syscall"

// sysProcAttr makes a demo node die with this process (SIGKILL when it
// exits for any reason, even kill -9), so a crashed bench leaves no orphans.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
