package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestRunCluster runs the whole command against a real local 3-node demo
// cluster for a very short time: build, start, warm up, write and read
// points, table, JSON, stop.
func TestRunCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node demo cluster")
	}
	var rep report
	stdout := runReport(t, &rep, "-d", "1s", "-c", "2", "-workloads", "write,read,read-local", "-keys", "50")
	if len(rep.Points) != 3 {
		t.Fatalf("want 3 points, got %d: %+v", len(rep.Points), rep)
	}
	for _, p := range rep.Points {
		if p.Ops == 0 || p.Errors != 0 || p.OpsPerSec <= 0 || p.P50Ms <= 0 || p.P99Ms < p.P50Ms {
			t.Errorf("%s c=%d: ops=%d errors=%d (%s) ops/s=%.0f p50=%.2f p99=%.2f",
				p.Workload, p.Concurrency, p.Ops, p.Errors, p.FirstError, p.OpsPerSec, p.P50Ms, p.P99Ms)
		}
		if p.Leader < 1 || p.Leader > 3 {
			t.Errorf("%s: leader %d", p.Workload, p.Leader)
		}
		if len(p.Nodes) != 3 {
			t.Fatalf("%s: want figures for 3 nodes, got %+v", p.Workload, p.Nodes)
		}
		var cpu float64
		for _, n := range p.Nodes {
			cpu += n.CPUSeconds
			if n.RSSMiB <= 0 || n.HWMMiB <= 0 {
				t.Errorf("%s node %d: rss %.1f MiB, hwm %.1f MiB", p.Workload, n.ID, n.RSSMiB, n.HWMMiB)
			}
		}
		if cpu <= 0 || p.CPUPerOpMs <= 0 || p.LoaderCPUSeconds <= 0 {
			t.Errorf("%s: nodes' CPU %.2f s, CPU/op %.3f ms, loader CPU %.2f s", p.Workload, cpu, p.CPUPerOpMs, p.LoaderCPUSeconds)
		}
	}
	for _, w := range []string{"write", "read", "read-local"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("table lacks %s:\n%s", w, stdout.String())
		}
	}
	// Close has waited for every node: none may be left running.
	for _, n := range rep.Points[0].Nodes {
		if err := syscall.Kill(n.PID, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("node %d (pid %d) still exists after run: kill 0 = %v", n.ID, n.PID, err)
		}
	}
}

// runReport runs the benchmark with args and -json, decodes the report it
// wrote into rep, and returns what it printed.
func runReport(t *testing.T, rep any, args ...string) *bytes.Buffer {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.json")
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), append(args, "-json", out), &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, rep); err != nil {
		t.Fatal(err)
	}
	return &stdout
}
