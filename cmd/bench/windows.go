package main

import (
	"slices"
	"time"
)

// sample is one request of the large-state load, timed from the start of
// the load.
type sample struct {
	End time.Duration // when the answer arrived
	Lat time.Duration
	Err bool
}

// span is when one node was taking a snapshot, relative to the start of
// the load (Start may be negative: begun before the load).
type span struct {
	Node       uint64
	Start, End time.Duration
}

// window is one short interval of the load. A request belongs to the
// window in which its answer arrived.
type window struct {
	Start, End time.Duration
	Lats       []time.Duration // acknowledged requests' latencies
	Errors     int
	// Snapshotting lists the nodes whose snapshot overlapped the window.
	Snapshotting []uint64
}

// makeWindows cuts [0, total) into windows of width (the last one may be
// shorter) and puts each sample in the window its answer arrived in.
// Samples at or after total go to the last window.
func makeWindows(samples []sample, total, width time.Duration) []window {
	if total <= 0 || width <= 0 {
		return nil
	}
	var ws []window
	for s := time.Duration(0); s < total; s += width {
		ws = append(ws, window{Start: s, End: min(s+width, total)})
	}
	for _, s := range samples {
		i := min(max(int(s.End/width), 0), len(ws)-1)
		if s.Err {
			ws[i].Errors++
		} else {
			ws[i].Lats = append(ws[i].Lats, s.Lat)
		}
	}
	return ws
}

// classify records in each window the nodes whose snapshot span overlaps
// it (a span that touches the window only at an edge does not).
func classify(ws []window, spans []span) {
	for i := range ws {
		ws[i].Snapshotting = nil
		for _, s := range spans {
			if s.Start < ws[i].End && s.End > ws[i].Start && !slices.Contains(ws[i].Snapshotting, s.Node) {
				ws[i].Snapshotting = append(ws[i].Snapshotting, s.Node)
			}
		}
		slices.Sort(ws[i].Snapshotting)
	}
}

// windowClass is the load's figures over the windows of one kind.
type windowClass struct {
	Name    string  `json:"name"`
	Windows int     `json:"windows"`
	Seconds float64 `json:"seconds"`
	Ops     int     `json:"ops"`
	Errors  int     `json:"errors"`
	// OpsPerSec is Ops over the windows' total length.
	OpsPerSec float64 `json:"ops_per_s"`
	// P99Ms is over every acknowledged request in these windows; the
	// worst and median are of the windows' own p99s.
	P99Ms       float64 `json:"p99_ms"`
	WorstP99Ms  float64 `json:"worst_window_p99_ms"`
	MedianP99Ms float64 `json:"median_window_p99_ms"`
}

// Window classes.
const (
	classNone   = "no snapshot"
	classAny    = "snapshot, any node"
	classLeader = "snapshot on leader"
	classAll    = "all windows"
)

// summarize returns the figures of the windows without a snapshot, with
// one on any node, with one on the leader, and of all windows.
func summarize(ws []window, leader uint64) []windowClass {
	return []windowClass{
		summarizeClass(classNone, ws, func(w window) bool { return len(w.Snapshotting) == 0 }),
		summarizeClass(classAny, ws, func(w window) bool { return len(w.Snapshotting) > 0 }),
		summarizeClass(classLeader, ws, func(w window) bool { return slices.Contains(w.Snapshotting, leader) }),
		summarizeClass(classAll, ws, func(window) bool { return true }),
	}
}

func summarizeClass(name string, ws []window, in func(window) bool) windowClass {
	c := windowClass{Name: name}
	var lats, p99s []time.Duration
	var secs time.Duration
	for _, w := range ws {
		if !in(w) {
			continue
		}
		c.Windows++
		secs += w.End - w.Start
		c.Ops += len(w.Lats)
		c.Errors += w.Errors
		lats = append(lats, w.Lats...)
		wl := slices.Clone(w.Lats)
		slices.Sort(wl)
		if len(wl) > 0 {
			p99s = append(p99s, percentile(wl, 99))
		}
	}
	c.Seconds = secs.Seconds()
	if secs > 0 {
		c.OpsPerSec = float64(c.Ops) / secs.Seconds()
	}
	slices.Sort(lats)
	slices.Sort(p99s)
	c.P99Ms = ms(percentile(lats, 99))
	c.WorstP99Ms = ms(percentile(p99s, 100))
	c.MedianP99Ms = ms(percentile(p99s, 50))
	return c
}
