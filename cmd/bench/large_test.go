package main

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const msD = time.Millisecond

func TestMakeWindows(t *testing.T) {
	samples := []sample{
		{End: 10 * msD, Lat: 1 * msD},
		{End: 249 * msD, Lat: 2 * msD},
		{End: 250 * msD, Lat: 3 * msD}, // second window
		{End: 600 * msD, Lat: 4 * msD, Err: true},
		{End: 650 * msD, Lat: 5 * msD}, // after total: the last window
	}
	ws := makeWindows(samples, 600*msD, 250*msD)
	if len(ws) != 3 {
		t.Fatalf("want 3 windows, got %+v", ws)
	}
	for i, want := range []struct {
		start, end time.Duration
		lats       []time.Duration
		errs       int
	}{
		{0, 250 * msD, []time.Duration{1 * msD, 2 * msD}, 0},
		{250 * msD, 500 * msD, []time.Duration{3 * msD}, 0},
		{500 * msD, 600 * msD, []time.Duration{5 * msD}, 1},
	} {
		w := ws[i]
		if w.Start != want.start || w.End != want.end || !slices.Equal(w.Lats, want.lats) || w.Errors != want.errs {
			t.Errorf("window %d = %+v, want %+v", i, w, want)
		}
	}
	t.Run("Empty", func(t *testing.T) {
		if ws := makeWindows(nil, 0, time.Second); ws != nil {
			t.Fatalf("got %+v", ws)
		}
	})
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spans []span
		want  [][]uint64 // per window of [0,1s) in 250 ms steps
	}{
		{"None", nil, [][]uint64{nil, nil, nil, nil}},
		{"Inside", []span{{Node: 2, Start: 300 * msD, End: 400 * msD}}, [][]uint64{nil, {2}, nil, nil}},
		{"Across", []span{{Node: 1, Start: 200 * msD, End: 800 * msD}}, [][]uint64{{1}, {1}, {1}, {1}}},
		{"TouchesEdges", []span{{Node: 1, Start: 250 * msD, End: 500 * msD}}, [][]uint64{nil, {1}, nil, nil}},
		{"BeforeLoad", []span{{Node: 3, Start: -time.Second, End: 100 * msD}}, [][]uint64{{3}, nil, nil, nil}},
		{"AfterLoad", []span{{Node: 3, Start: time.Second, End: 2 * time.Second}}, [][]uint64{nil, nil, nil, nil}},
		{"Nodes", []span{
			{Node: 3, Start: 0, End: 300 * msD},
			{Node: 1, Start: 100 * msD, End: 200 * msD},
			{Node: 1, Start: 210 * msD, End: 220 * msD},
		}, [][]uint64{{1, 3}, {3}, nil, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := makeWindows(nil, time.Second, 250*msD)
			classify(ws, tc.spans)
			for i, w := range ws {
				if !slices.Equal(w.Snapshotting, tc.want[i]) {
					t.Errorf("window %d: %v, want %v", i, w.Snapshotting, tc.want[i])
				}
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	lats := func(n int, d time.Duration) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			out[i] = d
		}
		return out
	}
	ws := []window{
		{Start: 0, End: 250 * msD, Lats: lats(100, 2*msD)},
		{Start: 250 * msD, End: 500 * msD, Lats: lats(50, 40*msD), Snapshotting: []uint64{1, 2}},
		{Start: 500 * msD, End: 750 * msD, Lats: lats(60, 20*msD), Errors: 1, Snapshotting: []uint64{2}},
		{Start: 750 * msD, End: 800 * msD, Lats: lats(10, 3*msD)},
	}
	got := summarize(ws, 1)
	want := []windowClass{
		{Name: classNone, Windows: 2, Seconds: 0.3, Ops: 110, OpsPerSec: 110 / 0.3, P99Ms: 3, WorstP99Ms: 3, MedianP99Ms: 2},
		{Name: classAny, Windows: 2, Seconds: 0.5, Ops: 110, Errors: 1, OpsPerSec: 220, P99Ms: 40, WorstP99Ms: 40, MedianP99Ms: 20},
		{Name: classLeader, Windows: 1, Seconds: 0.25, Ops: 50, OpsPerSec: 200, P99Ms: 40, WorstP99Ms: 40, MedianP99Ms: 40},
		{Name: classAll, Windows: 4, Seconds: 0.8, Ops: 220, Errors: 1, OpsPerSec: 275, P99Ms: 40, WorstP99Ms: 40, MedianP99Ms: 3},
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Windows != w.Windows || !near(g.Seconds, w.Seconds) || g.Ops != w.Ops || g.Errors != w.Errors ||
			!near(g.OpsPerSec, w.OpsPerSec) || g.P99Ms != w.P99Ms || g.WorstP99Ms != w.WorstP99Ms || g.MedianP99Ms != w.MedianP99Ms {
			t.Errorf("class %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestParseLogLine(t *testing.T) {
	at := time.Date(2026, 12, 1, 3, 4, 5, 123e6, time.UTC)
	for _, tc := range []struct {
		name  string
		line  string
		ok    bool
		msg   string
		at    time.Time
		attrs map[string]string
	}{
		{"Text", `time=2026-12-01T03:04:05.123Z level=INFO msg="snapshot saved" node=1 cluster=ab index=30066 bytes=5322145`,
			true, "snapshot saved", at, map[string]string{"node": "1", "index": "30066", "bytes": "5322145", "level": "INFO"}},
		{"TextOffset", `time=2026-12-01T04:04:05.123+01:00 level=INFO msg=started`, true, "started", at, nil},
		{"QuotedEscapes", `time=2026-12-01T03:04:05.123Z level=WARN msg="join not answered yet; retrying" err="dial \"x\": refused" target=http://a`,
			true, "join not answered yet; retrying", at, map[string]string{"err": `dial "x": refused`, "target": "http://a"}},
		{"JSON", `{"time":"2026-12-01T03:04:05.123Z","level":"INFO","msg":"snapshot saved","index":7,"bytes":9}`,
			true, "snapshot saved", at, map[string]string{"index": "7", "bytes": "9"}},
		{"NoTime", `level=INFO msg="installed snapshot" index=5`, true, "installed snapshot", time.Time{}, map[string]string{"index": "5"}},
		{"Unterminated", `time=2026-12-01T03:04:05.123Z msg="half`, true, "half", at, nil},
		{"BareWords", `panic: runtime error msg=x`, true, "x", time.Time{}, nil},
		{"ErrNoMsg", `demo: listen tcp: address in use`, false, "", time.Time{}, nil},
		{"ErrBadJSON", `{"msg":`, false, "", time.Time{}, nil},
		{"ErrEmpty", ``, false, "", time.Time{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, ok := parseLogLine(tc.line)
			if ok != tc.ok || rec.Msg != tc.msg || !rec.At.Equal(tc.at) {
				t.Fatalf("got %+v, %v; want msg %q at %v, ok %v", rec, ok, tc.msg, tc.at, tc.ok)
			}
			for k, v := range tc.attrs {
				if rec.Attrs[k] != v {
					t.Errorf("%s = %q, want %q", k, rec.Attrs[k], v)
				}
			}
		})
	}
}

func TestSnapshotEvents(t *testing.T) {
	log := `time=2026-12-01T03:04:05.000Z level=INFO msg="snapshot saved" index=10 bytes=100
time=2026-12-01T03:04:06.000Z level=INFO msg="membership changed" index=11
not a log line
time=2026-12-01T03:04:07.000Z level=INFO msg="snapshot saved" index=20
`
	recs, err := parseLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	got := snapshotEvents(4, recs)
	want := []snapEvent{
		{Node: 4, Seq: 1, At: time.Date(2026, 12, 1, 3, 4, 5, 0, time.UTC), Index: 10, Bytes: 100},
		{Node: 4, Seq: 2, At: time.Date(2026, 12, 1, 3, 4, 7, 0, time.UTC), Index: 20, Bytes: -1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

const metricsText = `# HELP embedraft_snapshots_total Snapshots taken and saved by this node.
# TYPE embedraft_snapshots_total counter
embedraft_snapshots_total 3
# TYPE embedraft_snapshot_duration_seconds histogram
embedraft_snapshot_duration_seconds_bucket{le="0.1"} 1
embedraft_snapshot_duration_seconds_bucket{le="+Inf"} 3
embedraft_snapshot_duration_seconds_sum 1.25
embedraft_snapshot_duration_seconds_count 3
embedraft_writes_total{result="ok"} 10
embedraft_writes_total{result="error"} 2 1700000000000
`

func TestParseMetrics(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
		want map[string]float64
	}{
		{"OK", metricsText, map[string]float64{metricSnapshots: 3, metricSnapDurSum: 1.25, metricSnapDurCount: 3, "embedraft_writes_total": 12}},
		{"NoHistogram", "embedraft_snapshots_total 2\n", map[string]float64{metricSnapshots: 2}},
		{"LabelWithSpace", `embedraft_snapshots_total{a="x y}"} 4` + "\n", map[string]float64{metricSnapshots: 4}},
		{"Garbage", "embedraft_snapshots_total\nembedraft_snapshots_total x\n<html>", map[string]float64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseMetrics(tc.text, metricSnapshots, metricSnapDurSum, metricSnapDurCount, "embedraft_writes_total")
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	s := newMetricSample(time.Time{}, "embedraft_snapshots_total 2\n")
	if !s.HasCount || s.Count != 2 || s.HasDur {
		t.Fatalf("sample without histogram: %+v", s)
	}
}

// polls builds metric samples one second apart from (count, sum) pairs;
// a negative count means no histogram in that poll.
func polls(t0 time.Time, pairs ...[2]float64) []metricSample {
	var out []metricSample
	for i, p := range pairs {
		s := metricSample{At: t0.Add(time.Duration(i) * time.Second), Count: p[0], HasCount: true}
		if p[0] >= 0 {
			s.DurCount, s.DurSum, s.HasDur = p[0], p[1], true
		}
		out = append(out, s)
	}
	return out
}

// counts builds metric samples one second apart with the counter only
// (no histogram); a negative count means no snapshot metrics at all.
func counts(t0 time.Time, cs ...float64) []metricSample {
	var out []metricSample
	for i, c := range cs {
		out = append(out, metricSample{At: t0.Add(time.Duration(i) * time.Second), Count: max(c, 0), HasCount: c >= 0})
	}
	return out
}

func TestSnapshotDurations(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		polls []metricSample
		want  map[int]snapDuration
	}{
		{"One", polls(t0, [2]float64{2, 1}, [2]float64{2, 1}, [2]float64{3, 1.5}),
			map[int]snapDuration{3: {Seconds: 0.5, Shared: 1, SeenAt: t0.Add(2 * time.Second)}}},
		{"TwoBetweenPolls", polls(t0, [2]float64{0, 0}, [2]float64{2, 3}),
			map[int]snapDuration{1: {1.5, 2, t0.Add(time.Second)}, 2: {1.5, 2, t0.Add(time.Second)}}},
		{"SkipsPollWithoutHistogram", polls(t0, [2]float64{1, 1}, [2]float64{-1, 0}, [2]float64{2, 3}),
			map[int]snapDuration{2: {2, 1, t0.Add(2 * time.Second)}}},
		{"Restart", polls(t0, [2]float64{5, 5}, [2]float64{0, 0}, [2]float64{1, 0.25}),
			map[int]snapDuration{1: {0.25, 1, t0.Add(2 * time.Second)}}},
		{"NoHistogram", polls(t0, [2]float64{-1, 0}, [2]float64{-1, 0}), map[int]snapDuration{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := snapshotDurations(tc.polls); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestSnapshotRows(t *testing.T) {
	load := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ev := func(seq int, at time.Duration, index uint64) snapEvent {
		return snapEvent{Node: 2, Seq: seq, At: load.Add(at), Index: index, Bytes: 1000}
	}
	events := []snapEvent{ev(1, -5*time.Second, 10), ev(2, 1500*msD, 20), ev(3, 2500*msD, 30)}
	for _, tc := range []struct {
		name   string
		events []snapEvent
		polls  []metricSample
		want   []snapshotRow
	}{
		{"LogAndHistogram", events, polls(load, [2]float64{1, 1}, [2]float64{1, 1}, [2]float64{2, 1.5}, [2]float64{3, 1.75}),
			[]snapshotRow{
				{Node: 2, Index: 20, Bytes: 1000, Seconds: 0.5, StartS: 1, EndS: 1.5},
				{Node: 2, Index: 30, Bytes: 1000, Seconds: 0.25, StartS: 2.25, EndS: 2.5},
			}},
		{"OldBuildNoHistogram", events, counts(load, 1, 1, 3),
			[]snapshotRow{
				{Node: 2, Index: 20, Bytes: 1000, Seconds: -1, StartS: 1.5, EndS: 1.5},
				{Node: 2, Index: 30, Bytes: 1000, Seconds: -1, StartS: 2.5, EndS: 2.5},
			}},
		{"NoMetricsLogOnly", events, counts(load.Add(-time.Second), -1, -1),
			[]snapshotRow{
				{Node: 2, Index: 20, Bytes: 1000, Seconds: -1, StartS: 1.5, EndS: 1.5},
				{Node: 2, Index: 30, Bytes: 1000, Seconds: -1, StartS: 2.5, EndS: 2.5},
			}},
		{"NoLog", nil, polls(load, [2]float64{1, 1}, [2]float64{1, 1}, [2]float64{2, 1.5}),
			[]snapshotRow{{Node: 2, Bytes: -1, Seconds: 0.5, Approx: true, StartS: 1.5, EndS: 2}}},
		{"NoPolls", events, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := snapshotRows(2, tc.events, tc.polls, load)
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if g.Node != w.Node || g.Index != w.Index || g.Bytes != w.Bytes || !near(g.Seconds, w.Seconds) ||
					!near(g.StartS, w.StartS) || !near(g.EndS, w.EndS) || g.Approx != w.Approx {
					t.Errorf("row %d:\n got %+v\nwant %+v", i, g, w)
				}
			}
			spans := spansOf(got)
			if len(spans) != len(spansOf(tc.want)) {
				t.Errorf("spans %+v: want one per row with a duration", spans)
			}
			for _, s := range spans {
				if s.Node != 2 || s.End < s.Start {
					t.Errorf("span %+v", s)
				}
			}
		})
	}
}

func TestNoteMissingMetrics(t *testing.T) {
	for _, tc := range []struct {
		name   string
		polls  []metricSample
		logged int
		want   []string
	}{
		{"OK", polls(time.Time{}, [2]float64{1, 1}, [2]float64{2, 2}), 2, nil},
		{"NoPolls", nil, 0, []string{"never answered"}},
		{"NoHistogram", counts(time.Time{}, 1, 2), 2, []string{"no " + metricSnapDurSum}},
		{"NoMetrics", counts(time.Time{}, -1, -1), 2, []string{"neither"}},
		{"NoLogLines", polls(time.Time{}, [2]float64{1, 1}), 0, []string{`no "snapshot saved" line`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			noteMissingMetrics(&got, 3, tc.polls, tc.logged)
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want notes mentioning %q", got, tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) || !strings.HasPrefix(got[i], "node 3") {
					t.Errorf("note %q lacks %q", got[i], w)
				}
			}
		})
	}
}

func TestParseSnapFileName(t *testing.T) {
	for _, tc := range []struct {
		name     string
		index    uint64
		received bool
		ok       bool
	}{
		{"0000000000000002-000000000000b58e.state", 46478, false, true},
		{"0000000000000002-000000000000b58e-4ed946ae.state", 46478, true, true},
		{"0000000000000002-000000000000af65.snap", 44901, false, true},
		{".tmp-0000000000000002-000000000000af65.state", 0, false, false},
		{"0000000000000002-zz.state", 0, false, false},
		{"0000000000000002-000000000000af65.wal", 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			index, received, ok := parseSnapFileName(tc.name)
			if index != tc.index || received != tc.received || ok != tc.ok {
				t.Fatalf("got %d, %v, %v", index, received, ok)
			}
		})
	}
}

func TestLiveStateBytes(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 99, 100, 12345, 1_000_000} {
		var want int64
		for i := range n {
			want += int64(len("k"+strconv.Itoa(i)) + 100)
		}
		if got := liveStateBytes(n, 100); got != want {
			t.Errorf("liveStateBytes(%d, 100) = %d, want %d", n, got, want)
		}
	}
}

func TestJoinerLogTimes(t *testing.T) {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	log := `time=2026-12-01T00:00:00.200Z level=INFO msg="joined cluster" via=http://a peers=3
time=2026-12-01T00:00:01.500Z level=INFO msg="received snapshot" from=3 index=46478 bytes=5340000
time=2026-12-01T00:00:02.000Z level=INFO msg="installed snapshot" index=46478
`
	recs, _ := parseLog(strings.NewReader(log))
	res := newCatchUpResult()
	joinerLogTimes(&res, recs, start)
	if res.JoinedS != 0.2 || res.SnapshotInstalledS != 2 || res.SnapshotIndex != 46478 || res.ViaSnapshot != "yes" ||
		fmt.Sprint(res.Received) != fmt.Sprint([]receivedSnap{{AtS: 1.5, Index: 46478, Bytes: 5340000}}) {
		t.Fatalf("got %+v", res)
	}
	t.Run("TwoReceived", func(t *testing.T) {
		log := `time=2026-12-01T00:00:00.100Z level=INFO msg="received snapshot" from=3 index=40037 bytes=10
time=2026-12-01T00:00:00.300Z level=INFO msg="received snapshot" from=3 index=45852
time=2026-12-01T00:00:00.400Z level=INFO msg="installed snapshot" index=45852
`
		recs, _ := parseLog(strings.NewReader(log))
		res := newCatchUpResult()
		joinerLogTimes(&res, recs, start)
		want := []receivedSnap{{AtS: 0.1, Index: 40037, Bytes: 10}, {AtS: 0.3, Index: 45852, Bytes: -1}}
		if fmt.Sprint(res.Received) != fmt.Sprint(want) || res.SnapshotIndex != 45852 || res.JoinedS != -1 {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("OldBuild", func(t *testing.T) { // no "received snapshot" line
		res := newCatchUpResult()
		joinerLogTimes(&res, []logRecord{recs[0], recs[2]}, start)
		if len(res.Received) != 0 || res.SnapshotInstalledS != 2 || res.SnapshotIndex != 46478 || res.ViaSnapshot != "yes" {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("NoSnapshot", func(t *testing.T) {
		res := newCatchUpResult()
		joinerLogTimes(&res, recs[:1], start)
		if res.ViaSnapshot != "not seen" || res.SnapshotInstalledS != -1 {
			t.Fatalf("got %+v", res)
		}
	})
}

func TestParseFlagsLarge(t *testing.T) {
	t.Run("Defaults", func(t *testing.T) {
		o, err := parseFlags([]string{"-large-state"}, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		l := o.large
		if !o.largeMode || l.Preload != 1_000_000 || l.PreloadConc != 128 || l.Concurrency != 16 || l.SnapshotCount != 10000 ||
			l.Window != 250*msD || l.Duration != 10*time.Second || l.ValueSize != 100 {
			t.Fatalf("got %+v", l)
		}
	})
	t.Run("Set", func(t *testing.T) {
		o, err := parseFlags([]string{"-large-state", "-preload", "500", "-c", "4", "-snapshot-count", "300", "-d", "2s", "-window", "100ms"}, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if l := o.large; l.Preload != 500 || l.Concurrency != 4 || l.SnapshotCount != 300 || l.Duration != 2*time.Second || l.Window != 100*msD {
			t.Fatalf("got %+v", l)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"ErrTwoLevels", []string{"-c", "1,16"}, "-c takes one concurrency level"},
		{"ErrTargets", []string{"-targets", "http://a"}, "-targets does not apply"},
		{"ErrWorkloads", []string{"-workloads", "read"}, "-workloads does not apply"},
		{"ErrPreload", []string{"-preload", "0"}, "-preload must be at least 1"},
		{"ErrWindow", []string{"-d", "1s", "-window", "2s"}, "-window must be positive and at most -d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(append([]string{"-large-state"}, tc.args...), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestRunLarge runs -large-state against a real local cluster with a tiny
// state: preload, load, a fourth node's catch-up, table and JSON.
func TestRunLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 4-node demo cluster")
	}
	var rep largeReport
	stdout := runReport(t, &rep,
		"-large-state", "-preload", "2000", "-preload-c", "8", "-c", "4", "-snapshot-count", "300", "-d", "2s")
	if rep.LiveStateBytes != liveStateBytes(2000, 100) || len(rep.Classes) != 4 || rep.Classes[3].Ops == 0 || len(rep.Windows) != 8 {
		t.Errorf("load: live %d, classes %+v, %d windows", rep.LiveStateBytes, rep.Classes, len(rep.Windows))
	}
	if len(rep.Snapshots) == 0 {
		t.Errorf("no snapshot seen:\n%s", stdout.String())
	}
	if cu := rep.CatchUp; cu.Node == 0 || cu.TimedOut || cu.Applied < cu.TargetCommit || cu.ViaSnapshot != "yes" || !cu.Settled {
		t.Errorf("catch-up: %+v", cu)
	}
	if len(rep.Memory) != 4 || len(rep.StateFiles) != 4 {
		t.Fatalf("memory %+v, state files %+v", rep.Memory, rep.StateFiles)
	}
	for _, m := range rep.Memory {
		if m.PeakMiB <= 0 || m.CatchUpPeakMiB <= 0 {
			t.Errorf("memory row %+v", m)
		}
	}
	for _, want := range []string{"snapshots", "no snapshot", "catch-up: node 4", "leader (sender)", "new node (receiver)"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, stdout.String())
		}
	}
}
