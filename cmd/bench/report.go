package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// report is everything one run measured; it is also the -json format.
type report struct {
	Started   time.Time `json:"started"`
	DurationS float64   `json:"duration_s"` // -d, per point
	ValueSize int       `json:"value_size"`
	Keys      int       `json:"keys"`
	Targets   []string  `json:"targets"`
	Points    []point   `json:"points"`
}

// point is one workload at one concurrency level.
type point struct {
	Workload    string  `json:"workload"`
	Concurrency int     `json:"c"`
	Seconds     float64 `json:"seconds"` // measured, from the first request to the last answer
	Ops         int64   `json:"ops"`     // acknowledged (2xx) requests
	Errors      int64   `json:"errors"`  // failed requests and non-2xx answers
	OpsPerSec   float64 `json:"ops_per_s"`
	P50Ms       float64 `json:"p50_ms"` // latency of acknowledged requests
	P99Ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
	// Leader is the leader's id when the point started (0: unknown).
	Leader uint64 `json:"leader,omitempty"`
	// Nodes is empty when the nodes' processes are not known (-targets).
	Nodes []nodeStat `json:"nodes,omitempty"`
	// LoaderCPUSeconds is this process's own CPU time over the point: on a
	// small machine the loader competes with the nodes.
	LoaderCPUSeconds float64 `json:"loader_cpu_s"`
	// CPUPerOpMs is all nodes' CPU time over the point divided by Ops.
	CPUPerOpMs float64  `json:"cpu_per_op_ms,omitempty"`
	Profiles   []string `json:"profiles,omitempty"`
}

// nodeStat is one node's resource use during a point, from /proc.
type nodeStat struct {
	ID         uint64  `json:"id"`
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_s"`       // utime+stime during the point
	RSSMiB     float64 `json:"rss_max_mib"` // largest VmRSS sampled during the point
	HWMMiB     float64 `json:"hwm_mib"`     // VmHWM at the end: the process's lifetime peak
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted samples, or 0 when there are none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// newPoint summarizes a point's measurements. It sorts lats in place.
func newPoint(workload string, c int, elapsed time.Duration, lats []time.Duration, errs int64, nodes []nodeStat) point {
	slices.Sort(lats)
	p := point{
		Workload:    workload,
		Concurrency: c,
		Seconds:     elapsed.Seconds(),
		Ops:         int64(len(lats)),
		Errors:      errs,
		P50Ms:       ms(percentile(lats, 50)),
		P99Ms:       ms(percentile(lats, 99)),
		MaxMs:       ms(percentile(lats, 100)),
		Nodes:       nodes,
	}
	if elapsed > 0 {
		p.OpsPerSec = float64(p.Ops) / elapsed.Seconds()
	}
	if len(nodes) > 0 && p.Ops > 0 {
		var cpu float64
		for _, n := range nodes {
			cpu += n.CPUSeconds
		}
		p.CPUPerOpMs = cpu * 1000 / float64(p.Ops)
	}
	return p
}

// writeTable prints one row per point.
func writeTable(w io.Writer, rep *report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tc\tops/s\tp50 ms\tp99 ms\terrors\tnode CPU s\tnode RSS MiB\tnode HWM MiB\tCPU/op ms\tloader CPU s\t")
	for _, p := range rep.Points {
		cpu, rss, hwm, perOp := "-", "-", "-", "-"
		if len(p.Nodes) > 0 {
			cpu = joinNodes(p.Nodes, func(n nodeStat) string { return fmt.Sprintf("%.1f", n.CPUSeconds) })
			rss = joinNodes(p.Nodes, func(n nodeStat) string { return fmt.Sprintf("%.0f", n.RSSMiB) })
			hwm = joinNodes(p.Nodes, func(n nodeStat) string { return fmt.Sprintf("%.0f", n.HWMMiB) })
			perOp = fmt.Sprintf("%.3f", p.CPUPerOpMs)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.2f\t%d\t%s\t%s\t%s\t%s\t%.1f\t\n",
			p.Workload, p.Concurrency, p.OpsPerSec, p.P50Ms, p.P99Ms, p.Errors, cpu, rss, hwm, perOp, p.LoaderCPUSeconds)
	}
	_ = tw.Flush()
}

func joinNodes(nodes []nodeStat, f func(nodeStat) string) string {
	s := make([]string, len(nodes))
	for i, n := range nodes {
		s[i] = f(n)
	}
	return strings.Join(s, ",")
}
