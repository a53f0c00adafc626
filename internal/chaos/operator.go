package chaos

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
)

// This file holds what operator-mistake scenarios need besides kill and
// restart: clusters formed by joins, starts that must be refused (a
// process expected to exit non-zero, its stderr captured), copies of a data
// directory, and membership queries.

// NewJoined starts the first slot as a one-member cluster (-cluster) and
// has the next Size-1 slots join it one at a time (-join), waiting until
// each is a voter.
func NewJoined(t testing.TB, opt Options) *Cluster {
	t.Helper()
	c := newSlots(t, opt)
	first := c.Nodes[0]
	if err := first.Start(c.ClusterArgs()...); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	for i, n := range c.Nodes[1:c.opt.Size] {
		if err := n.Start(c.JoinArgs(first)...); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitVoters(i+2, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// ClusterArgs are the flags that start a slot as a one-member cluster.
func (c *Cluster) ClusterArgs() []string {
	return []string{"-cluster", "-snapshot-count", strconv.Itoa(c.opt.SnapshotCount)}
}

// StaticArgs are the flags that start n as a member of a static cluster of
// members (-id and -peers).
func (c *Cluster) StaticArgs(n *Node, members []*Node) []string {
	return []string{"-id", strconv.Itoa(n.Index), "-peers", peersFlag(members), "-snapshot-count", strconv.Itoa(c.opt.SnapshotCount)}
}

// PeerList is the demo's GET /raft/api/getPeerList data.
type PeerList = embedraft.PeerList

// Peers fetches the node's view of the membership.
func (n *Node) Peers(ctx context.Context) (PeerList, error) {
	var env struct {
		Data PeerList `json:"data"`
	}
	err := n.getJSON(ctx, n.URL()+"/raft/api/getPeerList", &env)
	return env.Data, err
}

// WaitVoters waits until every running node answers getPeerList with a
// leader and exactly want voters and no learner.
func (c *Cluster) WaitVoters(want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var why string
	for time.Now().Before(deadline) {
		if why = c.votersWhy(want); why == "" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not %d voters after %v: %s", want, timeout, why)
}

func (c *Cluster) votersWhy(want int) string {
	running := c.Running()
	if len(running) == 0 {
		return "no running node"
	}
	for _, n := range running {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		pl, err := n.Peers(ctx)
		cancel()
		if err != nil {
			return fmt.Sprintf("node %d: %v", n.Index, err)
		}
		voters := 0
		for _, p := range pl.Peers {
			switch p.Role {
			case "voter":
				voters++
			default:
				return fmt.Sprintf("node %d sees member %d as %s", n.Index, p.ID, p.Role)
			}
		}
		if pl.Leader == 0 || voters != want {
			return fmt.Sprintf("node %d sees leader %d and %d voters", n.Index, pl.Leader, voters)
		}
	}
	return ""
}

// Args returns the flags of the node's last start (besides -addr and
// -data).
func (n *Node) Args() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.args...)
}

// Exit is how a process the scenario expected to stop ended.
type Exit struct {
	Code   int    // exit status; -1 if a signal ended it
	Stderr string // what it wrote to stderr (its last 64 KiB)
}

// Exited reports whether the current process exited by itself and was not
// collected with WaitExit yet.
func (n *Node) Exited() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// WaitExit waits up to d for the current process to exit by itself and
// returns its exit status and stderr. The exit counts as expected: its
// error line is not reported by LogProblems (a panic or race still is).
// The slot can then be started again.
func (n *Node) WaitExit(d time.Duration) (Exit, error) {
	n.mu.Lock()
	cmd, done, buf, off := n.cmd, n.done, n.stderr, n.logOff
	n.mu.Unlock()
	if cmd == nil {
		return Exit{}, fmt.Errorf("node %d not running", n.Index)
	}
	timer := time.NewTimer(max(d, 0))
	defer timer.Stop()
	select {
	case <-done:
	default:
		select {
		case <-done:
		case <-timer.C:
			return Exit{}, fmt.Errorf("node %d still running after %v", n.Index, d)
		}
	}
	end := off
	if fi, err := os.Stat(n.LogPath); err == nil {
		end = fi.Size()
	}
	n.mu.Lock()
	n.cmd = nil
	n.expected = append(n.expected, logRange{off, end})
	n.mu.Unlock()
	return Exit{Code: cmd.ProcessState.ExitCode(), Stderr: buf.String()}, nil
}

// ExpectExit starts the node with args (none: the flags of its last start,
// which args otherwise replace) and waits up to d for it to exit by
// itself, as a start the demo must refuse. A process still running after d
// is killed, and the error says so.
func (n *Node) ExpectExit(d time.Duration, args ...string) (Exit, error) {
	if err := n.Start(args...); err != nil {
		return Exit{}, err
	}
	ex, err := n.WaitExit(d)
	if err != nil {
		_ = n.Kill()
		return Exit{}, fmt.Errorf("%w; it was expected to refuse to start, killed it", err)
	}
	return ex, nil
}

// BackupDir copies the node's data directory (the node should be down)
// next to it and returns the copy's path.
func (n *Node) BackupDir() (string, error) {
	for i := 0; ; i++ {
		dst := fmt.Sprintf("%s.backup%d", n.Dir, i)
		if _, err := os.Stat(dst); os.IsNotExist(err) {
			return dst, copyDir(n.Dir, dst)
		}
	}
}

// RestoreDir replaces the node's data directory (the node must be down)
// with a copy of backup.
func (n *Node) RestoreDir(backup string) error {
	if err := os.RemoveAll(n.Dir); err != nil {
		return err
	}
	return copyDir(backup, n.Dir)
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o750)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}

// logRange is a byte range of a node log.
type logRange struct{ from, to int64 }

// findProblem returns the first index of bad in log, skipping occurrences
// inside the output of expected exits when skipExpected is set; -1 if none.
func (n *Node) findProblem(log, bad string, skipExpected bool) int {
	n.mu.Lock()
	expected := append([]logRange(nil), n.expected...)
	n.mu.Unlock()
	for from := 0; ; {
		i := strings.Index(log[from:], bad)
		if i < 0 {
			return -1
		}
		i += from
		if !skipExpected || !inRanges(int64(i), expected) {
			return i
		}
		from = i + len(bad)
	}
}

func inRanges(off int64, rs []logRange) bool {
	for _, r := range rs {
		// The match starts with the newline that ends the previous line.
		if off+1 >= r.from && off < r.to {
			return true
		}
	}
	return false
}

// tailBuffer keeps the last 64 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 64 << 10

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*tailMax { // trim now and then, not on every write
		b.buf = append(b.buf[:0:0], b.buf[len(b.buf)-tailMax:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf[max(0, len(b.buf)-tailMax):])
}
