// Command bench is embedraft's load generator: it drives a 3-node demo
// cluster with closed-loop writes and reads and reports throughput,
// latency, and the nodes' CPU and memory.
//
//	go run ./cmd/bench                                  # write, read, read-local at c=1,16,128
//	go run ./cmd/bench -d 5s -c 16 -workloads write -json out.json
//	go run ./cmd/bench -profile /tmp/prof               # CPU and allocation profiles of the leader
//	go run ./cmd/bench -targets http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083
//	go run ./cmd/bench -tls -workloads write           # the local cluster over mutual TLS
//	go run ./cmd/bench -large-state -preload 1000000 -d 30s   # snapshots of a large state, a new node's catch-up
//
// By default it builds ./demo, starts three demo processes on free loopback
// ports with fresh data directories, waits for every node's /readyz, runs
// each workload at each concurrency level for -d, and stops the cluster
// (also on Ctrl-C or error). With -targets it drives an existing cluster and
// reports no process figures.
//
// Workloads: write (POST /raft/api/set round-robin over the nodes), read
// (GET /kv/{key}, linearizable) and read-local (GET /kv/{key}?consistency=local).
// Reads use keys k0..k<keys-1>, written once before the first read point.
//
// -large-state is a mode of its own (see large.go): it preloads -preload
// keys, writes at one concurrency level (-c, default 16) for -d while
// snapshots are made, reporting throughput and p99 in -window windows with
// and without a snapshot in progress, then joins a fourth node and times
// its catch-up, and reports every node's peak memory.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	interrupted := ctx.Err() != nil
	stop()
	if interrupted {
		fmt.Fprintln(os.Stderr, "bench: interrupted; the cluster is stopped")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	load          loadConfig
	targets       []string
	demoBin       string
	snapshotCount uint64
	jsonOut       string
	keep          bool
	tls           bool
	largeMode     bool
	large         largeConfig
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workloads := fs.String("workloads", "write,read,read-local", "comma list of workloads: write, read, read-local")
	conc := fs.String("c", "1,16,128", "comma list of concurrency levels, each run as its own point")
	d := fs.Duration("d", 10*time.Second, "duration of each point")
	valueSize := fs.Int("value-size", 100, "bytes per written value")
	keys := fs.Int("keys", 1000, "key space: writes use k<seq mod keys>, reads pick k0..k<keys-1> at random")
	targets := fs.String("targets", "", "comma list of base URLs of an existing cluster (default: start a local 3-node demo cluster)")
	token := fs.String("token", "", "cluster token: passed to the demo nodes and sent as a bearer token")
	snap := fs.Uint64("snapshot-count", 0, "the demo's -snapshot-count (0: the demo's default)")
	jsonOut := fs.String("json", "", "also write the results as JSON to this file")
	profile := fs.String("profile", "", "save the leader's CPU and allocation profiles of each point in this directory (needs the demo's -pprof)")
	demoBin := fs.String("demo", "", "demo binary to start (default: go build ./demo)")
	keep := fs.Bool("keep", false, "keep the local cluster's data directories and logs")
	tlsFlag := fs.Bool("tls", false, "run the local cluster over mutual TLS (-cert, -key, -ca from a throwaway CA made in its temp dir); "+
		"the load client trusts that CA and presents no certificate")
	largeMode := fs.Bool("large-state", false, "measure snapshots of a large state and a new node's catch-up instead of -workloads (see -preload)")
	preload := fs.Int("preload", defaultPreload, "with -large-state: keys k0..k<preload-1> of -value-size bytes written first")
	preloadC := fs.Int("preload-c", defaultPreloadConc, "with -large-state: concurrent writers of the preload")
	window := fs.Duration("window", defaultWindow, "with -large-state: width of the windows the load is measured in")
	catchUpTimeout := fs.Duration("catchup-timeout", defaultCatchUpTimeout, "with -large-state: how long the new node gets to catch up")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	o := options{
		load: loadConfig{
			Duration:   *d,
			ValueSize:  *valueSize,
			Keys:       *keys,
			Token:      *token,
			ProfileDir: *profile,
		},
		demoBin:       *demoBin,
		snapshotCount: *snap,
		jsonOut:       *jsonOut,
		keep:          *keep,
		tls:           *tlsFlag,
	}
	var errs []error
	for _, w := range splitList(*workloads) {
		if !validWorkload(w) {
			errs = append(errs, fmt.Errorf("-workloads: unknown workload %q (want write, read or read-local)", w))
		}
		o.load.Workloads = append(o.load.Workloads, w)
	}
	if len(o.load.Workloads) == 0 {
		errs = append(errs, errors.New("-workloads: empty"))
	}
	for _, s := range splitList(*conc) {
		c, err := strconv.Atoi(s)
		if err != nil || c < 1 {
			errs = append(errs, fmt.Errorf("-c: %q is not a positive integer", s))
			continue
		}
		o.load.Concurrency = append(o.load.Concurrency, c)
	}
	if len(o.load.Concurrency) == 0 {
		errs = append(errs, errors.New("-c: empty"))
	}
	if *d <= 0 {
		errs = append(errs, errors.New("-d must be positive"))
	}
	if *valueSize < 0 {
		errs = append(errs, errors.New("-value-size must not be negative"))
	}
	if *keys < 1 {
		errs = append(errs, errors.New("-keys must be at least 1"))
	}
	if *tlsFlag && *targets != "" {
		errs = append(errs, errors.New("-tls starts its own cluster: it does not go with -targets"))
	}
	for _, t := range splitList(*targets) {
		o.targets = append(o.targets, strings.TrimSuffix(t, "/"))
	}
	if *largeMode {
		o.largeMode = true
		o.large = largeConfig{
			Preload:        *preload,
			PreloadConc:    *preloadC,
			Concurrency:    defaultLargeConc,
			Duration:       *d,
			Window:         *window,
			ValueSize:      *valueSize,
			SnapshotCount:  *snap,
			CatchUpTimeout: *catchUpTimeout,
			Token:          *token,
		}
		if *snap == 0 {
			o.large.SnapshotCount = defaultLargeSnapCount
		}
		errs = append(errs, checkLarge(&o, set)...)
	}
	return o, errors.Join(errs...)
}

// checkLarge checks the flags of -large-state: -c is one level, and the
// flags of the other mode are refused rather than ignored.
func checkLarge(o *options, set map[string]bool) []error {
	var errs []error
	if set["c"] {
		if len(o.load.Concurrency) != 1 {
			errs = append(errs, errors.New("-large-state: -c takes one concurrency level"))
		} else {
			o.large.Concurrency = o.load.Concurrency[0]
		}
	}
	for _, f := range []string{"targets", "tls", "profile", "workloads", "keys"} {
		if set[f] {
			errs = append(errs, fmt.Errorf("-large-state: -%s does not apply (it starts its own cluster and writes k0..k<preload-1>)", f))
		}
	}
	if o.large.Preload < 1 {
		errs = append(errs, errors.New("-preload must be at least 1"))
	}
	if o.large.PreloadConc < 1 {
		errs = append(errs, errors.New("-preload-c must be at least 1"))
	}
	if o.large.Window <= 0 || o.large.Window > o.large.Duration {
		errs = append(errs, errors.New("-window must be positive and at most -d"))
	}
	if o.large.CatchUpTimeout <= 0 {
		errs = append(errs, errors.New("-catchup-timeout must be positive"))
	}
	return errs
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// run parses args, sets up the cluster, runs every point and prints the
// report. The local cluster is stopped before run returns, whatever happens.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.largeMode {
		return runLarge(ctx, o, stdout, stderr)
	}
	if o.load.ProfileDir != "" {
		if err := os.MkdirAll(o.load.ProfileDir, 0o750); err != nil {
			return err
		}
	}
	var targets []target
	if len(o.targets) > 0 {
		for _, u := range o.targets {
			targets = append(targets, target{URL: u})
		}
	} else {
		c, err := startCluster(ctx, clusterOptions{
			Nodes:         3,
			DemoBin:       o.demoBin,
			Token:         o.load.Token,
			SnapshotCount: o.snapshotCount,
			Pprof:         o.load.ProfileDir != "",
			Keep:          o.keep,
			TLS:           o.tls,
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
		targets = c.Targets()
		o.load.TLS = c.tls
	}
	rep, err := runBench(ctx, o.load, targets, stderr)
	if rep != nil && len(rep.Points) > 0 {
		writeTable(stdout, rep)
		if o.jsonOut != "" {
			if jerr := writeJSONFile(o.jsonOut, rep); jerr != nil && err == nil {
				err = jerr
			}
		}
	}
	return err
}

func writeJSONFile(path string, rep any) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
