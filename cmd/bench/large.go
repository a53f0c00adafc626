package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// largeConfig is what -large-state does.
type largeConfig struct {
	Preload        int           // keys k0..k<Preload-1>
	PreloadConc    int           // writers during the preload
	Concurrency    int           // writers during the measured load
	Duration       time.Duration // of the measured load
	Window         time.Duration
	ValueSize      int
	SnapshotCount  uint64
	CatchUpTimeout time.Duration
	Token          string
}

// Defaults of the -large-state mode.
const (
	defaultPreload        = 1_000_000
	defaultPreloadConc    = 128
	defaultLargeConc      = 16
	defaultLargeSnapCount = 10000 // the demo's default, passed explicitly so every build gets the same
	defaultWindow         = 250 * time.Millisecond
	defaultCatchUpTimeout = 10 * time.Minute
	preloadAttempts       = 10 // per key, for answers such as a busy or moving leader
)

// runLarge starts a local 3-node cluster, preloads it, measures writes
// while snapshots are made, joins a fourth node and reports. The cluster
// is stopped before it returns.
func runLarge(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	cfg := o.large
	rep := &largeReport{
		Started:       time.Now().UTC(),
		Keys:          cfg.Preload,
		ValueSize:     cfg.ValueSize,
		SnapshotCount: cfg.SnapshotCount,
		Concurrency:   cfg.Concurrency,
		DurationS:     cfg.Duration.Seconds(),
		WindowMs:      ms(cfg.Window),
	}
	rep.LiveStateBytes = liveStateBytes(cfg.Preload, cfg.ValueSize)
	c, err := startCluster(ctx, clusterOptions{
		Nodes:         3,
		DemoBin:       o.demoBin,
		Token:         cfg.Token,
		SnapshotCount: cfg.SnapshotCount,
		Keep:          o.keep,
		Log:           stderr,
	})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	rep.Demo = c.bin
	if o.demoBin == "" {
		rep.Demo = "go build ./demo"
	}
	targets := c.Targets()
	b := &bencher{
		cfg:      loadConfig{ValueSize: cfg.ValueSize, Keys: cfg.Preload, Token: cfg.Token},
		targets:  targets,
		client:   newClient(max(cfg.PreloadConc, cfg.Concurrency), nil),
		value:    strings.Repeat("v", cfg.ValueSize),
		progress: stderr,
	}
	defer b.client.CloseIdleConnections()
	if err := b.warmUp(ctx); err != nil {
		return err
	}

	t0 := time.Now()
	if err := b.preload(ctx, cfg.Preload, cfg.PreloadConc); err != nil {
		return err
	}
	if err := b.waitApplied(ctx); err != nil {
		return fmt.Errorf("preload: %w", err)
	}
	rep.PreloadSeconds = time.Since(t0).Seconds()
	rep.PreloadOpsPerSec = float64(cfg.Preload) / rep.PreloadSeconds
	fmt.Fprintf(stderr, "preloaded %d keys in %.1f s; live state %s\n", cfg.Preload, rep.PreloadSeconds, fmtBytes(rep.LiveStateBytes))

	mem := newMemTable(targets)
	rep.Leader, _, _ = b.leaderURL(ctx)

	// The measured load, with every node's snapshot metrics polled.
	poller := startMetricsPoller(b, targets)
	mem.resetPeaks(&rep.Missing)
	fmt.Fprintf(stderr, "write load c=%d for %s, leader %d, -snapshot-count %d\n", cfg.Concurrency, cfg.Duration, rep.Leader, cfg.SnapshotCount)
	commit0 := b.leaderCommit(ctx)
	mon := startMonitor(targets)
	loadStart := time.Now()
	samples, err := b.windowedLoad(ctx, cfg, loadStart)
	if err != nil {
		poller.stop()
		return err
	}
	mem.record(mon.stop(), phaseLoad)
	if commit1 := b.leaderCommit(ctx); commit0 > 0 && commit1 >= commit0 {
		rep.LoadEntries = commit1 - commit0
	}

	// Catch-up of a new member.
	// Its failure is reported with the rest rather than losing the load's
	// figures.
	rep.CatchUp, err = b.catchUp(ctx, c, cfg, mem, &rep.Missing)
	polls := poller.stop()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		rep.Missing = append(rep.Missing, err.Error())
	}

	// Snapshots, from the logs and the polls.
	for i, t := range targets {
		recs, lerr := readLog(c.nodes[i].logPath)
		if lerr != nil {
			rep.Missing = append(rep.Missing, fmt.Sprintf("node %d log: %v", t.ID, lerr))
		}
		evs := snapshotEvents(t.ID, recs)
		rep.Snapshots = append(rep.Snapshots, snapshotRows(t.ID, evs, polls[i], loadStart)...)
		noteMissingMetrics(&rep.Missing, t.ID, polls[i], len(evs))
	}
	for i := range rep.Snapshots {
		rep.Snapshots[i].Phase = phaseOf(rep.Snapshots[i], cfg.Duration)
	}
	ws := makeWindows(samples, cfg.Duration, cfg.Window)
	spans := spansOf(rep.Snapshots)
	classify(ws, spans)
	rep.Classes = summarize(ws, rep.Leader)
	for _, w := range ws {
		rep.Windows = append(rep.Windows, newWindowRow(w))
	}
	if !hasDurations(rep.Snapshots) && len(rep.Snapshots) > 0 {
		rep.Missing = append(rep.Missing, "no snapshot duration (histogram "+metricSnapDurSum+"): windows are not classified, all count as without a snapshot")
	}
	if overlapping(spans, cfg.Duration) == 0 {
		rep.Missing = append(rep.Missing, fmt.Sprintf("no snapshot overlapped the load: %d writes in %d raft entries over %s at -snapshot-count %d "+
			"(entries between snapshots); lower -snapshot-count or raise -d", rep.Classes[3].Ops, rep.LoadEntries, cfg.Duration, cfg.SnapshotCount))
	}
	for i, t := range targets {
		rep.StateFiles = append(rep.StateFiles, newestStateFile(t.ID, c.dataDir(i)))
	}
	if rep.CatchUp.Node != 0 {
		rep.StateFiles = append(rep.StateFiles, newestStateFile(rep.CatchUp.Node, c.dataDir(len(targets))))
	}
	rep.Memory = mem.rows(rep.Leader, rep.CatchUp.Sender, rep.CatchUp.Node, rep.LiveStateBytes)

	writeLargeTable(stdout, rep)
	if o.jsonOut != "" {
		return writeJSONFile(o.jsonOut, rep)
	}
	return nil
}

// liveStateBytes is the keys' and values' bytes of k0..k<n-1>.
func liveStateBytes(n, valueSize int) int64 {
	var sum int64
	lo := 0
	for digits, hi := 1, 10; lo < n; digits, hi = digits+1, hi*10 {
		top := min(n, hi)
		sum += int64(top-lo) * int64(1+digits+valueSize)
		lo = top
	}
	return sum
}

// leaderCommit is the leader's commit index, or 0 when it cannot be read.
func (b *bencher) leaderCommit(ctx context.Context) uint64 {
	_, url, err := b.leaderURL(ctx)
	if err != nil {
		return 0
	}
	st, err := b.status(ctx, url)
	if err != nil {
		return 0
	}
	return st.Commit
}

// phaseOf says whether a snapshot began during the load of length d.
func phaseOf(r snapshotRow, d time.Duration) string {
	if secs(r.StartS) < d {
		return "load"
	}
	return "catch-up"
}

// preload writes k0..k<n-1> with conc writers, round-robin over the
// targets, retrying a key a few times, with a progress line every second.
func (b *bencher) preload(ctx context.Context, n, conc int) error {
	var next, done atomic.Int64
	errs := make(chan error, conc)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for range conc {
		go func() { // exits when the keys run out, on an error or when ctx ends
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					errs <- nil
					return
				}
				key := "k" + strconv.FormatInt(i, 10)
				var err error
				for a := range preloadAttempts {
					if err = b.write(ctx, b.targets[int(i)%len(b.targets)].URL, key); err == nil || ctx.Err() != nil {
						break
					}
					time.Sleep(time.Duration(a+1) * 50 * time.Millisecond)
				}
				if err != nil {
					cancel()
					errs <- fmt.Errorf("preload %s: %w", key, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	line := func() {
		d := done.Load()
		el := time.Since(start).Seconds()
		fmt.Fprintf(b.progress, "\rpreload %9d/%d keys %5.0fs %7.0f keys/s ", d, n, el, float64(d)/el)
	}
	var err error
	for left := conc; left > 0; {
		select {
		case e := <-errs:
			left--
			if err == nil {
				err = e
			}
		case <-tick.C:
			line()
		}
	}
	line()
	fmt.Fprintln(b.progress)
	return err
}

// windowedLoad writes with cfg.Concurrency closed-loop workers for
// cfg.Duration, overwriting the preloaded keys in turn (so the live state
// keeps its size), and returns every request's timing.
func (b *bencher) windowedLoad(ctx context.Context, cfg largeConfig, start time.Time) ([]sample, error) {
	results := make([][]sample, cfg.Concurrency)
	keys := uint64(cfg.Preload)
	b.closedLoop(ctx, "load", cfg.Concurrency, start, start.Add(cfg.Duration), func(w int, i uint64) bool {
		t0 := time.Now()
		err := b.write(ctx, b.targets[i%uint64(len(b.targets))].URL, "k"+strconv.FormatUint(i%keys, 10))
		if ctx.Err() != nil {
			return false
		}
		now := time.Now()
		results[w] = append(results[w], sample{End: now.Sub(start), Lat: now.Sub(t0), Err: err != nil})
		return err == nil
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var all []sample
	for _, r := range results {
		all = append(all, r...)
	}
	return all, nil
}

// metricsPoller polls every target's /metrics every metricsPollInterval.
type metricsPoller struct {
	polls [][]metricSample // per target; owned by the goroutine until done
	stopc chan struct{}
	done  chan struct{}
}

func startMetricsPoller(b *bencher, targets []target) *metricsPoller {
	p := &metricsPoller{polls: make([][]metricSample, len(targets)), stopc: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	poll := func() {
		for i, t := range targets {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			body, err := b.do(pctx, http.MethodGet, t.URL+"/metrics", "")
			pcancel()
			if err == nil {
				p.polls[i] = append(p.polls[i], newMetricSample(time.Now(), body))
			}
		}
	}
	poll()
	go func() { // exits when stop is called
		defer close(p.done)
		defer cancel()
		tick := time.NewTicker(metricsPollInterval)
		defer tick.Stop()
		for {
			select {
			case <-p.stopc:
				poll()
				return
			case <-tick.C:
				poll()
			}
		}
	}()
	return p
}

// stop ends polling (after one last poll) and returns the polls.
func (p *metricsPoller) stop() [][]metricSample {
	select {
	case <-p.done:
	default:
		close(p.stopc)
		<-p.done
	}
	return p.polls
}

func noteMissingMetrics(missing *[]string, node uint64, polls []metricSample, logged int) {
	switch {
	case len(polls) == 0:
		*missing = append(*missing, fmt.Sprintf("node %d: GET /metrics never answered", node))
	case !polls[0].HasDur && !polls[0].HasCount:
		*missing = append(*missing, fmt.Sprintf("node %d: /metrics has neither %s nor the duration histogram", node, metricSnapshots))
	case !polls[0].HasDur:
		*missing = append(*missing, fmt.Sprintf("node %d: /metrics has no %s", node, metricSnapDurSum))
	}
	if logged == 0 && len(polls) > 0 && (polls[len(polls)-1].Count > 0 || polls[len(polls)-1].DurCount > 0) {
		*missing = append(*missing, fmt.Sprintf("node %d: no %q line in its log: index and bytes unknown", node, snapshotMsg))
	}
}

func hasDurations(rows []snapshotRow) bool {
	for _, r := range rows {
		if r.Seconds >= 0 {
			return true
		}
	}
	return false
}

// overlapping counts the spans that overlap [0, d).
func overlapping(spans []span, d time.Duration) int {
	n := 0
	for _, s := range spans {
		if s.Start < d && s.End > 0 {
			n++
		}
	}
	return n
}
