package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// largeReport is what -large-state measured; it is also its -json format.
type largeReport struct {
	Started          time.Time `json:"started"`
	Demo             string    `json:"demo"`
	Keys             int       `json:"keys"`
	ValueSize        int       `json:"value_size"`
	LiveStateBytes   int64     `json:"live_state_bytes"` // keys' and values' bytes
	SnapshotCount    uint64    `json:"snapshot_count"`
	PreloadSeconds   float64   `json:"preload_s"`
	PreloadOpsPerSec float64   `json:"preload_ops_per_s"`
	Concurrency      int       `json:"c"`
	DurationS        float64   `json:"duration_s"`
	WindowMs         float64   `json:"window_ms"`
	Leader           uint64    `json:"leader"` // when the load started
	// LoadEntries is how far the leader's commit index moved during the
	// load (writes are batched, several to an entry); 0: unknown.
	LoadEntries uint64 `json:"load_entries"`
	// Snapshots are those counted from the start of the load to the end
	// of the catch-up; StartS and EndS are relative to the load's start.
	Snapshots  []snapshotRow `json:"snapshots"`
	Classes    []windowClass `json:"classes"`
	Windows    []windowRow   `json:"windows"`
	StateFiles []stateFile   `json:"state_files"`
	CatchUp    catchUpResult `json:"catch_up"`
	Memory     []memRow      `json:"memory"`
	Missing    []string      `json:"missing,omitempty"` // what this run could not measure, and why
}

// windowRow is one window in the JSON.
type windowRow struct {
	StartS       float64  `json:"start_s"`
	Ops          int      `json:"ops"`
	Errors       int      `json:"errors,omitempty"`
	P99Ms        float64  `json:"p99_ms"`
	Snapshotting []uint64 `json:"snapshotting,omitempty"`
}

func newWindowRow(w window) windowRow {
	r := windowRow{StartS: w.Start.Seconds(), Ops: len(w.Lats), Errors: w.Errors, Snapshotting: w.Snapshotting}
	c := summarizeClass("", []window{w}, func(window) bool { return true })
	r.P99Ms = c.P99Ms
	return r
}

// writeLargeTable prints the report as a few small tables.
func writeLargeTable(w io.Writer, rep *largeReport) {
	fmt.Fprintf(w, "large state: %d keys, %d-byte values, live state %s (%d bytes of keys and values); demo: %s\n",
		rep.Keys, rep.ValueSize, fmtBytes(rep.LiveStateBytes), rep.LiveStateBytes, rep.Demo)
	fmt.Fprintf(w, "preload: %.1f s (%.0f keys/s); -snapshot-count %d; leader during the load: node %d\n\n",
		rep.PreloadSeconds, rep.PreloadOpsPerSec, rep.SnapshotCount, rep.Leader)

	fmt.Fprintln(w, "snapshots (start/end: seconds into the load; * approximate):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "node\tindex\tbytes\tseconds\tstart s\tend s\tphase\t")
	for _, s := range rep.Snapshots {
		idx, secs, mark := "?", "?", ""
		if s.Index > 0 {
			idx = fmt.Sprint(s.Index)
		}
		if s.Seconds >= 0 {
			secs = fmt.Sprintf("%.3f", s.Seconds)
		}
		if s.Approx {
			mark = "*"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.2f\t%.2f%s\t%s\t\n", s.Node, idx, fmtBytes(s.Bytes), secs, s.StartS, s.EndS, mark, s.Phase)
	}
	if len(rep.Snapshots) == 0 {
		fmt.Fprintln(tw, "none\t\t\t\t\t\t\t")
	}
	_ = tw.Flush()

	fmt.Fprintln(w, "\nstate files (newest per node):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "node\tfile\tindex\tsize\tsize/live\t")
	for _, f := range rep.StateFiles {
		if f.File == "" {
			fmt.Fprintf(tw, "%d\tnone\t-\t-\t-\t\n", f.Node)
			continue
		}
		fmt.Fprintf(tw, "%d\t%s/%s\t%d\t%s\t%.2f\t\n", f.Node, f.Kind, f.File, f.Index, fmtBytes(f.Bytes), ratio(f.Bytes, rep.LiveStateBytes))
	}
	_ = tw.Flush()

	fmt.Fprintf(w, "\nwrites, c=%d for %.0f s in %.0f ms windows (%d raft entries; a snapshot every %d):\n",
		rep.Concurrency, rep.DurationS, rep.WindowMs, rep.LoadEntries, rep.SnapshotCount)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "windows\tn\tseconds\tops\terrors\tops/s\tp99 ms\tmedian window p99 ms\tworst window p99 ms\t")
	for _, c := range rep.Classes {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t\n",
			c.Name, c.Windows, c.Seconds, c.Ops, c.Errors, c.OpsPerSec, c.P99Ms, c.MedianP99Ms, c.WorstP99Ms)
	}
	_ = tw.Flush()

	cu := rep.CatchUp
	fmt.Fprintf(w, "\ncatch-up: node %d joined via %s (sender: leader %d), target commit %d: ", cu.Node, cu.Via, cu.Sender, cu.TargetCommit)
	if cu.TimedOut {
		fmt.Fprintf(w, "NOT caught up after %.1f s (applied %d)\n", cu.Seconds, cu.Applied)
	} else {
		fmt.Fprintf(w, "%.2f s from its start\n", cu.Seconds)
	}
	var recv []string
	for _, r := range cu.Received {
		recv = append(recv, fmt.Sprintf("index %d (%s) %s", r.Index, fmtBytes(r.Bytes), fmtSecs(r.AtS)))
	}
	if len(recv) == 0 {
		recv = []string{"not logged"}
	}
	fmt.Fprintf(w, "  joined %s; snapshots received: %s; installed index %d %s; via a snapshot: %s\n",
		fmtSecs(cu.JoinedS), strings.Join(recv, ", "), cu.SnapshotIndex, fmtSecs(cu.SnapshotInstalledS), cu.ViaSnapshot)
	settled := fmt.Sprintf("every member's snapshot count steady for %s", settleQuiet)
	if !cu.Settled {
		settled = "snapshot counts still changing or unreadable"
	}
	fmt.Fprintf(w, "  promoted to voter %s; then waited %.2f s: %s\n", fmtSecs(cu.PromotedS), cu.SettleS, settled)
	if len(cu.Received) > 1 {
		fmt.Fprintf(w, "  note: %d snapshots were streamed to the new node; only the installed one was used\n", len(cu.Received))
	}

	fmt.Fprintf(w, "\nmemory (MiB; peaks from VmHWM reset at each phase's start and VmRSS sampled every 200 ms; live state %s):\n", fmtBytes(rep.LiveStateBytes))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "node\trole\tafter preload\tpeak load\tpeak catch-up\tpeak/live\tpeak/after preload\t")
	for _, m := range rep.Memory {
		pre, load, perPre := "-", "-", "-"
		if m.AfterPreloadMiB > 0 {
			pre, load, perPre = fmt.Sprintf("%.0f", m.AfterPreloadMiB), fmt.Sprintf("%.0f", m.LoadPeakMiB), fmt.Sprintf("%.2f", m.PeakPerPreload)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.0f\t%.2f\t%s\t\n", m.Node, m.Role, pre, load, m.CatchUpPeakMiB, m.PeakPerLive, perPre)
	}
	_ = tw.Flush()
	if len(rep.Missing) > 0 {
		fmt.Fprintln(w, "\nnot measured / notes:")
		for _, m := range rep.Missing {
			fmt.Fprintln(w, "  - "+m)
		}
	}
}

func ratio(a, b int64) float64 {
	if b <= 0 || a < 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func fmtSecs(s float64) string {
	if s < 0 {
		return "?"
	}
	return fmt.Sprintf("at %.2f s", s)
}
