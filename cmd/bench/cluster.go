package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/embedraft/embedraft/internal/certgen"
)

// clusterOptions describe a local demo cluster.
type clusterOptions struct {
	Nodes         int
	DemoBin       string // prebuilt demo; empty: go build ./demo into the temp dir
	Token         string
	SnapshotCount uint64 // 0: the demo's default
	Pprof         bool
	Keep          bool      // keep the temp dir (data and logs) after Close
	TLS           bool      // mutual TLS with a throwaway CA written to the temp dir
	Log           io.Writer // where to say what is happening; nil: discard
}

// cluster is a set of demo processes started by startCluster. Close stops
// them; nothing else does, except this process dying (see sysProcAttr).
type cluster struct {
	dir   string
	keep  bool
	log   io.Writer
	nodes []*proc
	tls   *tls.Config // client configuration for the nodes' https URLs; nil without TLS
	bin   string      // the demo binary the nodes run
	opts  clusterOptions
}

// proc is one demo process.
type proc struct {
	id      uint64
	url     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait returned
}

// readyTimeout bounds the wait for every node's /readyz.
const readyTimeout = 60 * time.Second

// startCluster builds the demo (unless opts.DemoBin is set), starts
// opts.Nodes demo processes as a static cluster on free loopback ports and
// waits until each answers /readyz with 200. On error nothing is left
// running.
func startCluster(ctx context.Context, opts clusterOptions) (_ *cluster, err error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	dir, err := os.MkdirTemp("", "embedraft-bench-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, keep: opts.Keep, log: opts.Log, opts: opts}
	defer func() {
		if err != nil {
			c.dumpLogs()
			_ = c.Close()
		}
	}()
	bin := opts.DemoBin
	if bin == "" {
		bin = filepath.Join(dir, "demo")
		fmt.Fprintln(opts.Log, "building ./demo")
		if err := buildDemo(ctx, bin); err != nil {
			return c, err
		}
	}
	c.bin = bin
	ports, err := freePorts(opts.Nodes)
	if err != nil {
		return c, err
	}
	scheme := "http"
	var tlsArgs []string
	if opts.TLS {
		scheme = "https"
		if tlsArgs, c.tls, err = makeCerts(dir); err != nil {
			return c, err
		}
	}
	peers := make([]string, len(ports))
	for i, p := range ports {
		peers[i] = fmt.Sprintf("%d=%s://127.0.0.1:%d", i+1, scheme, p)
	}
	for i, p := range ports {
		id := uint64(i + 1)
		args := []string{
			"-id", strconv.FormatUint(id, 10),
			"-addr", "127.0.0.1:" + strconv.Itoa(p),
			"-peers", strings.Join(peers, ","),
			"-data", filepath.Join(dir, "n"+strconv.Itoa(i+1)),
		}
		if opts.Token != "" {
			args = append(args, "-token", opts.Token)
		}
		args = append(args, tlsArgs...)
		if opts.SnapshotCount > 0 {
			args = append(args, "-snapshot-count", strconv.FormatUint(opts.SnapshotCount, 10))
		}
		if opts.Pprof {
			args = append(args, "-pprof")
		}
		pr, err := startProc(bin, args, filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)))
		if err != nil {
			return c, err
		}
		pr.id, pr.url = id, scheme+"://127.0.0.1:"+strconv.Itoa(p)
		c.nodes = append(c.nodes, pr)
	}
	fmt.Fprintf(opts.Log, "started %d nodes in %s, waiting for /readyz\n", len(c.nodes), dir)
	if err := c.waitReady(ctx); err != nil {
		return c, err
	}
	return c, nil
}

// makeCerts writes a throwaway CA and one leaf for 127.0.0.1 (server and
// client authentication, shared by the nodes) to dir, and returns the
// demo's -cert, -key and -ca arguments and a client configuration that
// trusts the CA.
func makeCerts(dir string) ([]string, *tls.Config, error) {
	ca, err := certgen.NewCA("embedraft bench CA")
	if err != nil {
		return nil, nil, err
	}
	leaf, err := ca.Leaf("embedraft bench node", "127.0.0.1")
	if err != nil {
		return nil, nil, err
	}
	certFile, keyFile, err := leaf.Write(dir, "node")
	if err != nil {
		return nil, nil, err
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := certgen.WriteFile(caFile, ca.CertPEM); err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return []string{"-cert", certFile, "-key", keyFile, "-ca", caFile}, &tls.Config{RootCAs: pool}, nil
}

// buildDemo runs go build ./demo in the module that holds the working
// directory.
func buildDemo(ctx context.Context, out string) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return errors.New("run bench inside the embedraft module, or pass -demo")
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./demo")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./demo: %w\n%s", err, b)
	}
	return nil
}

// freePorts returns n loopback ports that were free a moment ago: all n are
// held open together so they are distinct, then released for the demo.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startProc(bin string, args []string, logPath string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() { // exits when the process does
		_ = cmd.Wait()
		_ = f.Close()
		close(p.exited)
	}()
	return p, nil
}

// waitReady polls every node's /readyz until all answer 200.
func (c *cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: c.tls}}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	ready := make([]bool, len(c.nodes))
	for {
		all := true
		for i, n := range c.nodes {
			select {
			case <-n.exited:
				return fmt.Errorf("node %d exited before it was ready: %s", n.id, n.cmd.ProcessState)
			default:
			}
			if !ready[i] {
				ready[i] = getOK(ctx, client, n.url+"/readyz")
				all = all && ready[i]
			}
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for /readyz: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func getOK(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Targets lists the nodes with their PIDs, in id order.
func (c *cluster) Targets() []target {
	var ts []target
	for _, n := range c.nodes {
		ts = append(ts, target{ID: n.id, URL: n.url, PID: n.cmd.Process.Pid})
	}
	return ts
}

// stopTimeout is how long a node gets to shut down after SIGTERM before it
// is killed.
const stopTimeout = 5 * time.Second

// Close stops every node (SIGTERM, then SIGKILL after stopTimeout), waits
// for them to exit and removes the temp dir unless asked to keep it.
func (c *cluster) Close() error {
	for _, n := range c.nodes {
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
	}
	timeout := time.After(stopTimeout) // fires once
	for _, n := range c.nodes {
		select {
		case <-n.exited:
		case <-timeout:
			for _, m := range c.nodes {
				_ = m.cmd.Process.Kill() // an error only says it already exited
			}
			<-n.exited
		}
	}
	c.nodes = nil
	if c.keep {
		fmt.Fprintln(c.log, "kept", c.dir)
		return nil
	}
	return os.RemoveAll(c.dir)
}

// dumpLogs prints the end of every node's log, to explain a failed start.
func (c *cluster) dumpLogs() {
	for _, n := range c.nodes {
		b, _ := os.ReadFile(n.logPath)
		lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(c.log, "--- node %d log tail (%s)\n%s\n", n.id, n.logPath, bytes.Join(lines, []byte("\n")))
	}
}
