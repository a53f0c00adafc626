// Package chaos runs embedraft's demo as real OS processes on loopback and
// injects faults: kill -9, SIGSTOP/SIGCONT, restarts on the same or a wiped
// data directory, and network faults through a TCP proxy per direction per
// pair of nodes. It records a client history and checks it (porcupine
// linearizability, lost acknowledged writes, convergence, one leader per
// term, no panics). It is for the project's robustness tests only.
package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/embedraft/embedraft"
)

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// BuildDemo builds ./demo once per test binary into dir and returns the
// binary's path.
func BuildDemo(dir string) (string, error) {
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "embedraft-demo")
		cmd := exec.Command("go", "build", "-o", buildBin, "./demo")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build demo: %v\n%s", err, out)
		}
	})
	return buildBin, buildErr
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the module")
	}
	return filepath.Dir(mod), nil
}

// holdPorts returns n listeners on distinct loopback ports. The harness
// holds each until the first process that needs its port starts (see
// freeHeldPort), so the proxies and other processes cannot take the port
// meanwhile.
func holdPorts(n int) ([]net.Listener, error) {
	lns := make([]net.Listener, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// Node is one demo process slot: a fixed port and data directory, started
// and stopped many times.
type Node struct {
	Index   int // 1-based position in the cluster
	Dir     string
	LogPath string

	bin  string
	env  []string
	mu   sync.Mutex
	port int    // where the next start listens (Move swaps it)
	url  string // scheme://127.0.0.1:port
	// scheme is http, or https with tlsArgs (-cert, -key, -ca) given to
	// every start; client is what the harness talks to the node with (nil:
	// adminClient).
	scheme  string
	tlsArgs []string
	client  *http.Client
	// sparePort is the other address the slot may move to; every other
	// node's dial map routes it through a proxy too. held are listeners
	// keeping the slot's unused port(s) from being taken (see move.go).
	sparePort int
	held      []net.Listener
	cmd       *exec.Cmd
	done      chan struct{}
	log       *os.File
	args      []string

	stderr   *tailBuffer // the current process's stderr (its tail)
	logOff   int64       // where the current process's output starts in LogPath
	expected []logRange  // log ranges of processes that exited as expected
}

// URL is the node's advertised URL, http(s)://127.0.0.1:Port.
func (n *Node) URL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.url
}

// Running reports whether the process is alive (possibly stopped by
// SIGSTOP). A process that exited by itself is not running, and signalling
// it fails: a node that dies unasked fails the scenario.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Start launches the demo with args (besides -addr and -data).
func (n *Node) Start(args ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done:
			// It died unasked: say how, rather than only that the slot
			// is taken.
			return fmt.Errorf("node %d exited by itself (%v); its stderr ends with:\n%s",
				n.Index, n.cmd.ProcessState, n.stderr)
		default:
		}
		return fmt.Errorf("node %d already running", n.Index)
	}
	if args != nil {
		n.args = args
	}
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== start %s %v\n", time.Now().Format(time.RFC3339Nano), n.args)
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return err
	}
	n.freeHeldPort() // after a Move, the harness holds the port this start needs
	all := append([]string{"-addr", fmt.Sprintf("127.0.0.1:%d", n.port), "-data", n.Dir}, n.tlsArgs...)
	all = append(all, n.args...)
	cmd := exec.Command(n.bin, all...)
	n.stderr, n.logOff = &tailBuffer{}, off
	cmd.Stdout, cmd.Stderr = f, io.MultiWriter(f, n.stderr)
	cmd.Env = append(os.Environ(), n.env...)
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	n.cmd, n.log, n.done = cmd, f, make(chan struct{})
	go func(cmd *exec.Cmd, f *os.File, done chan struct{}) { // exits when the process does
		_ = cmd.Wait()
		f.Close()
		close(done)
	}(cmd, f, n.done)
	return nil
}

// Restart starts the node again with the arguments of its last start.
func (n *Node) Restart() error { return n.Start() }

func (n *Node) signal(sig syscall.Signal) (chan struct{}, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil, fmt.Errorf("node %d not running", n.Index)
	}
	select {
	case <-n.done:
		return nil, fmt.Errorf("node %d exited by itself (%v, see %s); its stderr ends with:\n%s",
			n.Index, n.cmd.ProcessState, n.LogPath, n.stderr)
	default:
	}
	return n.done, n.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to exit.
func (n *Node) Kill() error {
	_, _ = n.signal(syscall.SIGCONT) // a stopped process dies too, but be sure
	done, err := n.signal(syscall.SIGKILL)
	if err != nil {
		return err
	}
	<-done
	n.mu.Lock()
	n.cmd = nil
	n.mu.Unlock()
	return nil
}

// Stop sends SIGTERM and waits (up to 15s, then SIGKILL).
func (n *Node) Stop() error {
	done, err := n.signal(syscall.SIGTERM)
	if err != nil {
		return err
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = n.Kill()
		return fmt.Errorf("node %d ignored SIGTERM for 15s", n.Index)
	}
	n.mu.Lock()
	n.cmd = nil
	n.mu.Unlock()
	return nil
}

// Pause sends SIGSTOP; Resume sends SIGCONT.
func (n *Node) Pause() error { _, err := n.signal(syscall.SIGSTOP); return err }

// Resume continues a paused node.
func (n *Node) Resume() error { _, err := n.signal(syscall.SIGCONT); return err }

// Wipe removes the node's data directory (the node must be down).
func (n *Node) Wipe() error { return os.RemoveAll(n.Dir) }

// Status is the demo's GET /raft/api/status data.
type Status = embedraft.Status

var adminClient = &http.Client{Timeout: 2 * time.Second}

// Status fetches the node's status.
func (n *Node) Status(ctx context.Context) (Status, error) {
	var env struct {
		Data Status `json:"data"`
	}
	err := n.getJSON(ctx, n.URL()+"/raft/api/status", &env)
	return env.Data, err
}

// httpClient is what the harness's own calls to the node use: with TLS,
// it trusts the cluster's CA and presents an admin client certificate.
func (n *Node) httpClient() *http.Client {
	if n.client != nil {
		return n.client
	}
	return adminClient
}

// State fetches the node's whole key-value map (local read).
func (n *Node) State(ctx context.Context) (map[string]string, error) {
	m := map[string]string{}
	err := n.getJSON(ctx, n.URL()+"/kv?consistency=local", &m)
	return m, err
}

// Post sends a JSON body and returns the status and body.
func (n *Node) Post(ctx context.Context, path string, body any) (int, []byte, error) {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL()+path, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	resp, err := n.httpClient().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes(), nil
}

func (n *Node) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := n.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// peersFlag renders a static member list for -peers.
func peersFlag(nodes []*Node) string {
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = strconv.Itoa(n.Index) + "=" + n.URL()
	}
	return strings.Join(parts, ",")
}
