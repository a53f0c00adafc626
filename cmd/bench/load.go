package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Workloads.
const (
	workloadWrite     = "write"      // POST /raft/api/set, round-robin over the nodes
	workloadRead      = "read"       // GET /kv/{key}: linearizable
	workloadReadLocal = "read-local" // GET /kv/{key}?consistency=local
)

func validWorkload(w string) bool {
	return w == workloadWrite || w == workloadRead || w == workloadReadLocal
}

// loadConfig is what runBench does.
type loadConfig struct {
	Workloads   []string
	Concurrency []int
	Duration    time.Duration // per point
	ValueSize   int
	Keys        int
	Token       string // sent as a bearer token when set
	ProfileDir  string // save the leader's profiles here when set
	// TLS is the client configuration for https targets (-tls: trusts the
	// throwaway CA, presents no certificate); nil: Go's defaults.
	TLS *tls.Config
}

// target is one node to send requests to. PID is 0 when the node is not a
// local process this command knows; its resource use is then not reported.
type target struct {
	ID  uint64
	URL string
	PID int
}

// bencher runs points against a fixed set of targets.
type bencher struct {
	cfg      loadConfig
	targets  []target
	client   *http.Client
	value    string
	progress io.Writer
}

// runBench runs every workload at every concurrency level, in order, and
// returns the points measured so far also when it fails.
func runBench(ctx context.Context, cfg loadConfig, targets []target, progress io.Writer) (*report, error) {
	if len(targets) == 0 {
		return nil, errors.New("no targets")
	}
	rep := &report{
		Started:   time.Now().UTC(),
		DurationS: cfg.Duration.Seconds(),
		ValueSize: cfg.ValueSize,
		Keys:      cfg.Keys,
	}
	for _, t := range targets {
		rep.Targets = append(rep.Targets, t.URL)
	}
	b := &bencher{
		cfg:      cfg,
		targets:  targets,
		client:   newClient(max(1, slicesMax(cfg.Concurrency)), cfg.TLS),
		value:    strings.Repeat("v", cfg.ValueSize),
		progress: progress,
	}
	defer b.client.CloseIdleConnections()
	if err := b.warmUp(ctx); err != nil {
		return rep, err
	}
	if cfg.ProfileDir != "" {
		if err := b.checkPprof(ctx); err != nil {
			return rep, err
		}
	}
	populated := false
	for _, w := range cfg.Workloads {
		if w != workloadWrite && !populated {
			if err := b.populate(ctx); err != nil {
				return rep, err
			}
			populated = true
		}
		for _, c := range cfg.Concurrency {
			p, err := b.runPoint(ctx, w, c)
			if err != nil {
				return rep, fmt.Errorf("%s c=%d: %w", w, c, err)
			}
			rep.Points = append(rep.Points, p)
		}
	}
	return rep, nil
}

func slicesMax(s []int) int {
	m := 0
	for _, v := range s {
		m = max(m, v)
	}
	return m
}

// newClient keeps a connection per worker and node alive between requests.
func newClient(conc int, tlsConfig *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: conc + 8,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			TLSClientConfig:     tlsConfig,
		},
	}
}

// do sends one request and reads the whole answer; a non-2xx answer is an
// error carrying the status and the start of the body.
func (b *bencher) do(ctx context.Context, method, url, body string) (string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if b.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+b.cfg.Token)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("%s %s: HTTP %d: %.200s", method, url, resp.StatusCode, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (b *bencher) write(ctx context.Context, base, key string) error {
	_, err := b.do(ctx, http.MethodPost, base+"/raft/api/set", `{"key":"`+key+`","value":"`+b.value+`"}`)
	return err
}

// op runs request number i of a workload.
func (b *bencher) op(ctx context.Context, workload string, i uint64, rng *rand.Rand) error {
	base := b.targets[i%uint64(len(b.targets))].URL
	keys := uint64(b.cfg.Keys)
	switch workload {
	case workloadWrite:
		return b.write(ctx, base, "k"+strconv.FormatUint(i%keys, 10))
	case workloadRead:
		_, err := b.do(ctx, http.MethodGet, base+"/kv/k"+strconv.FormatUint(rng.Uint64N(keys), 10), "")
		return err
	default:
		_, err := b.do(ctx, http.MethodGet, base+"/kv/k"+strconv.FormatUint(rng.Uint64N(keys), 10)+"?consistency=local", "")
		return err
	}
}

// warmUpTimeout bounds warmUp and populate's wait for the marker key.
const warmUpTimeout = 30 * time.Second

// warmUp writes once through every node, retrying until warmUpTimeout, so
// that forwarding works before anything is measured.
func (b *bencher) warmUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, warmUpTimeout)
	defer cancel()
	for _, t := range b.targets {
		if err := poll(ctx, func() error { return b.write(ctx, t.URL, "bench-warmup") }); err != nil {
			return fmt.Errorf("warm-up write via %s: %w", t.URL, err)
		}
	}
	return nil
}

// poll calls f every 100 ms until it succeeds or ctx ends, and then returns
// f's last error.
func poll(ctx context.Context, f func() error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

// populateConcurrency is the number of writers that fill the key space.
const populateConcurrency = 16

// populate writes every key the read workloads use, then waits until a
// marker written afterwards is visible in every node's local state: entries
// apply in log order, so every key is too.
func (b *bencher) populate(ctx context.Context) error {
	fmt.Fprintf(b.progress, "writing %d keys for the read workloads\n", b.cfg.Keys)
	var next atomic.Uint64
	errs := make(chan error, populateConcurrency)
	for range populateConcurrency {
		go func() {
			for {
				i := next.Add(1) - 1
				if i >= uint64(b.cfg.Keys) {
					errs <- nil
					return
				}
				if err := b.write(ctx, b.targets[i%uint64(len(b.targets))].URL, "k"+strconv.FormatUint(i, 10)); err != nil {
					errs <- fmt.Errorf("populate: %w", err)
					return
				}
			}
		}()
	}
	var err error
	for range populateConcurrency {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return err
	}
	if err := b.waitApplied(ctx); err != nil {
		return fmt.Errorf("populate: %w", err)
	}
	return nil
}

// waitApplied writes a marker and waits until every target's local state
// has it: entries apply in log order, so everything written before it has
// been applied too.
func (b *bencher) waitApplied(ctx context.Context) error {
	marker := strconv.FormatInt(time.Now().UnixNano(), 10)
	if _, err := b.do(ctx, http.MethodPost, b.targets[0].URL+"/raft/api/set", `{"key":"bench-sync","value":"`+marker+`"}`); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, warmUpTimeout)
	defer cancel()
	for _, t := range b.targets {
		err := poll(wctx, func() error {
			v, err := b.do(wctx, http.MethodGet, t.URL+"/kv/bench-sync?consistency=local", "")
			if err == nil && v != marker {
				err = fmt.Errorf("bench-sync is %q, not yet %q", v, marker)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("waiting for %s to apply the keys: %w", t.URL, err)
		}
	}
	return nil
}

// closedLoop runs c workers until deadline or until ctx ends, each calling
// op with its index and the next sequence number (op reports a success,
// counted in the progress line printed every second). It returns once
// every worker has.
func (b *bencher) closedLoop(ctx context.Context, label string, c int, start, deadline time.Time,
	op func(w int, i uint64) bool) {
	var (
		seq atomic.Uint64
		ops atomic.Int64
		wg  sync.WaitGroup
	)
	for w := range c {
		wg.Add(1)
		go func() { // exits at the deadline or when ctx ends
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if op(w, seq.Add(1)-1) {
					ops.Add(1)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	line := func() {
		el := time.Since(start).Seconds()
		n := ops.Load()
		fmt.Fprintf(b.progress, "\r%-10s c=%-4d %5.1fs %9d ops %9.0f ops/s ", label, c, el, n, float64(n)/el)
	}
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-tick.C:
			line()
		}
	}
	line()
	fmt.Fprintln(b.progress)
}

// workerResult is what one worker measured; only it writes to it until
// the worker is done.
type workerResult struct {
	lats  []time.Duration
	errs  int64
	first string
}

// runPoint runs workload with c closed-loop workers for the configured
// duration and measures it.
func (b *bencher) runPoint(ctx context.Context, workload string, c int) (point, error) {
	leader, _, _ := b.leaderURL(ctx) // only informative: 0 when unknown
	mon := startMonitor(b.targets)
	self0, _ := procCPU(os.Getpid())
	var prof *profiler
	if b.cfg.ProfileDir != "" {
		prof = b.startProfiles(ctx, workload, c)
	}
	results := make([]workerResult, c)
	rngs := make([]*rand.Rand, c)
	start := time.Now()
	for w := range rngs {
		rngs[w] = rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
	}
	b.closedLoop(ctx, workload, c, start, start.Add(b.cfg.Duration), func(w int, i uint64) bool {
		res := &results[w]
		t0 := time.Now()
		if err := b.op(ctx, workload, i, rngs[w]); err != nil {
			if ctx.Err() == nil {
				res.errs++
				if res.first == "" {
					res.first = err.Error()
				}
			}
			return false
		}
		res.lats = append(res.lats, time.Since(t0))
		return true
	})
	elapsed := time.Since(start)
	nodes := mon.stop()
	self1, _ := procCPU(os.Getpid())
	var profiles []string
	var profErr error
	if prof != nil {
		profiles, profErr = prof.wait()
	}
	if err := ctx.Err(); err != nil {
		return point{}, err
	}
	if profErr != nil {
		return point{}, profErr
	}
	var lats []time.Duration
	var errs int64
	var first string
	for _, r := range results {
		lats = append(lats, r.lats...)
		errs += r.errs
		if first == "" {
			first = r.first
		}
	}
	p := newPoint(workload, c, elapsed, lats, errs, nodes)
	p.FirstError = first
	p.Leader = leader
	p.LoaderCPUSeconds = (self1 - self0).Seconds()
	p.Profiles = profiles
	return p, nil
}
