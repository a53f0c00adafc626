package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// logRecord is one line of a node's slog output.
type logRecord struct {
	At    time.Time // zero when the line has no parsable time
	Msg   string
	Attrs map[string]string
}

// parseLogLine reads one slog line, in the text format
// (time=... level=INFO msg="snapshot saved" index=10 bytes=20) or the JSON
// one. ok is false for anything else.
func parseLogLine(line string) (rec logRecord, ok bool) {
	line = strings.TrimSpace(line)
	var attrs map[string]string
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			return rec, false
		}
		attrs = make(map[string]string, len(m))
		for k, v := range m {
			if s, isString := v.(string); isString {
				attrs[k] = s
			} else {
				b, _ := json.Marshal(v)
				attrs[k] = string(b)
			}
		}
	} else {
		attrs = parseLogfmt(line)
	}
	msg, ok := attrs["msg"]
	if !ok {
		return rec, false
	}
	rec = logRecord{Msg: msg, Attrs: attrs}
	if t, err := time.Parse(time.RFC3339Nano, attrs["time"]); err == nil {
		rec.At = t
	}
	return rec, true
}

// parseLogfmt splits key=value pairs; a value may be a Go-quoted string,
// as slog's text handler writes values with spaces or quotes. A token
// without = is skipped.
func parseLogfmt(line string) map[string]string {
	out := map[string]string{}
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		sp := strings.IndexByte(line, ' ')
		if eq < 0 {
			break
		}
		if sp >= 0 && sp < eq { // a bare word
			line = line[sp+1:]
			continue
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil { // unterminated: take the rest of the line
				val, line = strings.TrimPrefix(rest, `"`), ""
			} else {
				val, _ = strconv.Unquote(q)
				line = rest[len(q):]
			}
		} else if i := strings.IndexByte(rest, ' '); i >= 0 {
			val, line = rest[:i], rest[i+1:]
		} else {
			val, line = rest, ""
		}
		out[key] = val
	}
	return out
}

// readLog parses every slog line of a node's log file.
func readLog(path string) ([]logRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseLog(f)
}

func parseLog(r io.Reader) ([]logRecord, error) {
	var out []logRecord
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if rec, ok := parseLogLine(sc.Text()); ok {
			out = append(out, rec)
		}
	}
	return out, sc.Err()
}

// firstRecord returns the first record with msg, if any.
func firstRecord(recs []logRecord, msg string) (logRecord, bool) {
	for _, r := range recs {
		if r.Msg == msg {
			return r, true
		}
	}
	return logRecord{}, false
}

// snapshotMsg is what a node logs once a snapshot is saved, with its index
// and size in bytes.
const snapshotMsg = "snapshot saved"

// snapEvent is one "snapshot saved" line. Seq counts them from 1 in the
// node's log; the node counts embedraft_snapshots_total and the duration
// histogram in the same call, so the Seq-th line is the snapshot that
// brought the count to Seq.
type snapEvent struct {
	Node  uint64
	Seq   int
	At    time.Time
	Index uint64
	Bytes int64 // -1: not logged
}

// snapshotEvents picks the "snapshot saved" lines of one node's log.
func snapshotEvents(node uint64, recs []logRecord) []snapEvent {
	var out []snapEvent
	for _, r := range recs {
		if r.Msg != snapshotMsg {
			continue
		}
		ev := snapEvent{Node: node, Seq: len(out) + 1, At: r.At, Bytes: -1}
		ev.Index, _ = strconv.ParseUint(r.Attrs["index"], 10, 64)
		if b, err := strconv.ParseInt(r.Attrs["bytes"], 10, 64); err == nil {
			ev.Bytes = b
		}
		out = append(out, ev)
	}
	return out
}

// Metric names, from the library's metrics.go.
const (
	metricSnapshots     = "embedraft_snapshots_total"
	metricSnapDurSum    = "embedraft_snapshot_duration_seconds_sum"
	metricSnapDurCount  = "embedraft_snapshot_duration_seconds_count"
	metricsPollInterval = 100 * time.Millisecond
)

// parseMetrics returns, from a Prometheus text exposition, the value of
// each of names that appears, summed over its label sets.
func parseMetrics(text string, names ...string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		want := false
		for _, n := range names {
			want = want || n == name
		}
		if !want {
			continue
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				continue
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest) // value [timestamp]
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out
}

// metricSample is one poll of a node's snapshot metrics.
type metricSample struct {
	At       time.Time
	Count    float64 // embedraft_snapshots_total
	HasCount bool
	DurSum   float64 // embedraft_snapshot_duration_seconds_sum
	DurCount float64 // embedraft_snapshot_duration_seconds_count
	HasDur   bool
}

func newMetricSample(at time.Time, text string) metricSample {
	m := parseMetrics(text, metricSnapshots, metricSnapDurSum, metricSnapDurCount)
	s := metricSample{At: at}
	s.Count, s.HasCount = m[metricSnapshots]
	sum, okSum := m[metricSnapDurSum]
	cnt, okCnt := m[metricSnapDurCount]
	s.DurSum, s.DurCount, s.HasDur = sum, cnt, okSum && okCnt
	return s
}

// snapDuration is what the polls tell of one snapshot.
type snapDuration struct {
	Seconds float64
	// Shared is how many snapshots completed between the two polls that
	// bracket this one: above 1, Seconds is their mean.
	Shared int
	SeenAt time.Time // the first poll that counted it
}

// snapshotDurations maps each snapshot counted between consecutive polls
// (by its ordinal, as the histogram's count after it) to its duration,
// from the deltas of the histogram's sum. Polls without the histogram are
// skipped; a count that goes down (a restart) starts over.
func snapshotDurations(polls []metricSample) map[int]snapDuration {
	out := map[int]snapDuration{}
	var prev *metricSample
	for i := range polls {
		p := &polls[i]
		if !p.HasDur {
			continue
		}
		if prev != nil && p.DurCount > prev.DurCount {
			k := int(p.DurCount - prev.DurCount)
			for ord := int(prev.DurCount) + 1; ord <= int(p.DurCount); ord++ {
				out[ord] = snapDuration{Seconds: (p.DurSum - prev.DurSum) / float64(k), Shared: k, SeenAt: p.At}
			}
		}
		prev = p
	}
	return out
}

// snapshotRow is one snapshot as reported.
type snapshotRow struct {
	Node  uint64 `json:"node"`
	Index uint64 `json:"index,omitempty"` // 0: not in the log
	Bytes int64  `json:"bytes"`           // -1: not in the log
	// Seconds is its creation time from the duration histogram; -1 when
	// the build has none.
	Seconds float64 `json:"seconds"`
	// Approx is set when two or more snapshots fell between two polls
	// (their mean), or when the end time is a poll's, not the log's.
	Approx bool `json:"approx,omitempty"`
	// StartS and EndS are seconds since the load began.
	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
	// Phase is "load" for a snapshot begun during the load, else
	// "catch-up" (a member's addition makes the leader take one).
	Phase string `json:"phase"`
}

// snapshotRows joins a node's "snapshot saved" lines and its polls into
// the snapshots counted after the first poll (earlier ones belong to the
// preload). A snapshot without a log line ends at the poll that saw it.
func snapshotRows(node uint64, events []snapEvent, polls []metricSample, loadStart time.Time) []snapshotRow {
	if len(polls) == 0 {
		return nil
	}
	first, last := polls[0], polls[len(polls)-1]
	var from, to int
	switch {
	case first.HasDur && last.HasDur:
		from, to = int(first.DurCount), int(last.DurCount)
	case first.HasCount && last.HasCount:
		from, to = int(first.Count), int(last.Count)
	default: // no metrics: every logged snapshot after the first poll
		for _, e := range events {
			if !e.At.IsZero() && e.At.After(first.At) {
				if from == 0 && to == 0 {
					from = e.Seq - 1
				}
				to = e.Seq
			}
		}
	}
	durs := snapshotDurations(polls)
	bySeq := map[int]snapEvent{}
	for _, e := range events {
		bySeq[e.Seq] = e
	}
	var rows []snapshotRow
	for ord := from + 1; ord <= to; ord++ {
		r := snapshotRow{Node: node, Bytes: -1, Seconds: -1}
		end := time.Time{}
		if e, ok := bySeq[ord]; ok {
			r.Index, r.Bytes, end = e.Index, e.Bytes, e.At
		}
		d, hasDur := durs[ord]
		if end.IsZero() && hasDur {
			end, r.Approx = d.SeenAt, true
		}
		if end.IsZero() {
			end, r.Approx = pollSeeing(polls, ord), true
		}
		r.EndS = end.Sub(loadStart).Seconds()
		r.StartS = r.EndS
		if hasDur {
			r.Seconds = d.Seconds
			r.StartS = r.EndS - d.Seconds
			r.Approx = r.Approx || d.Shared > 1
		}
		rows = append(rows, r)
	}
	return rows
}

// pollSeeing returns the time of the first poll whose snapshot count
// reached ord.
func pollSeeing(polls []metricSample, ord int) time.Time {
	for _, p := range polls {
		if (p.HasDur && int(p.DurCount) >= ord) || (!p.HasDur && p.HasCount && int(p.Count) >= ord) {
			return p.At
		}
	}
	return polls[len(polls)-1].At
}

// spansOf turns the rows with a known duration into spans.
func spansOf(rows []snapshotRow) []span {
	var out []span
	for _, r := range rows {
		if r.Seconds >= 0 {
			out = append(out, span{Node: r.Node, Start: secs(r.StartS), End: secs(r.EndS)})
		}
	}
	return out
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func fmtBytes(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
