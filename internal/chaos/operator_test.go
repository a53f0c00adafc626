package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeNode is a slot whose "demo" is a shell script.
func fakeNode(t *testing.T, script string) *Node {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-demo")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Node{Index: 1, port: 1, Dir: filepath.Join(dir, "data"), LogPath: filepath.Join(dir, "n1.log"), bin: bin}
}

func TestOperatorExpectExit(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		n := fakeNode(t, `echo starting; echo "demo: embedraft: this member's data was lost" >&2; exit 3`)
		ex, err := n.ExpectExit(10*time.Second, "-id", "2")
		if err != nil {
			t.Fatal(err)
		}
		if ex.Code != 3 || strings.TrimSpace(ex.Stderr) != "demo: embedraft: this member's data was lost" {
			t.Fatalf("got %+v", ex)
		}
		if n.Running() || n.Exited() {
			t.Fatal("an expected exit still occupies the slot")
		}
		c := &Cluster{Nodes: []*Node{n}}
		if p := c.LogProblems(); len(p) != 0 {
			t.Fatalf("an expected refusal is reported: %v", p)
		}
		// The same error from a start nobody expected to end is a problem.
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for !n.Exited() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if p := c.LogProblems(); len(p) != 1 || !strings.Contains(p[0], "data was lost") {
			t.Fatalf("an unexpected error exit: %v", p)
		}
	})
	t.Run("ErrPanicInRefusal", func(t *testing.T) {
		n := fakeNode(t, `echo "panic: boom" >&2; exit 2`)
		ex, err := n.ExpectExit(10 * time.Second)
		if err != nil || ex.Code != 2 {
			t.Fatalf("got %+v %v", ex, err)
		}
		c := &Cluster{Nodes: []*Node{n}}
		if p := c.LogProblems(); len(p) != 1 || !strings.Contains(p[0], "panic: boom") {
			t.Fatalf("a panic during an expected exit: %v", p)
		}
	})
	t.Run("ErrStillRunning", func(t *testing.T) {
		n := fakeNode(t, `exec sleep 30`)
		start := time.Now()
		if _, err := n.ExpectExit(300 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
			t.Fatalf("got %v", err)
		}
		if n.Running() || time.Since(start) > 10*time.Second {
			t.Fatal("a start that was not refused was not killed")
		}
	})
}

func TestOperatorBackupRestore(t *testing.T) {
	n := fakeNode(t, "exit 0")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(n.Dir, "wal"), 0o750))
	must(os.WriteFile(filepath.Join(n.Dir, "standalone.log"), []byte("abc"), 0o640))
	must(os.WriteFile(filepath.Join(n.Dir, "wal", "0.wal"), []byte("w"), 0o640))
	backup, err := n.BackupDir()
	must(err)
	must(os.WriteFile(filepath.Join(n.Dir, "standalone.log"), []byte("changed"), 0o640))
	must(os.WriteFile(filepath.Join(n.Dir, "extra"), nil, 0o640))
	must(n.RestoreDir(backup))
	b, err := os.ReadFile(filepath.Join(n.Dir, "standalone.log"))
	must(err)
	if string(b) != "abc" {
		t.Fatalf("standalone.log = %q", b)
	}
	if _, err := os.Stat(filepath.Join(n.Dir, "extra")); !os.IsNotExist(err) {
		t.Fatalf("extra file survived the restore: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.Dir, "wal", "0.wal")); err != nil {
		t.Fatal(err)
	}
}

func TestOperatorTailBuffer(t *testing.T) {
	var b tailBuffer
	for range 5 {
		_, _ = b.Write([]byte(strings.Repeat("x", tailMax/2)))
	}
	_, _ = b.Write([]byte("end"))
	if s := b.String(); len(s) != tailMax || !strings.HasSuffix(s, "end") {
		t.Fatalf("len %d, suffix %q", len(s), s[len(s)-3:])
	}
}
