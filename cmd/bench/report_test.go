package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"Empty", nil, 50, 0},
		{"One", ms(7), 50, 7 * time.Millisecond},
		{"OneP99", ms(7), 99, 7 * time.Millisecond},
		{"TwoP50", ms(1, 9), 50, 1 * time.Millisecond},
		{"TwoP99", ms(1, 9), 99, 9 * time.Millisecond},
		{"HundredP50", hundred, 50, 50 * time.Millisecond},
		{"HundredP99", hundred, 99, 99 * time.Millisecond},
		{"HundredMax", hundred, 100, 100 * time.Millisecond},
		{"HundredTiny", hundred, 0.001, 1 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.p); got != tc.want {
				t.Fatalf("percentile(%v, %v) = %v, want %v", tc.sorted, tc.p, got, tc.want)
			}
		})
	}
}

func TestNewPoint(t *testing.T) {
	lats := []time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	nodes := []nodeStat{{ID: 1, CPUSeconds: 0.004}, {ID: 2, CPUSeconds: 0.002}, {ID: 3, CPUSeconds: 0.002}}
	p := newPoint("write", 16, 2*time.Second, lats, 1, nodes)
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"ops", float64(p.Ops), 4},
		{"errors", float64(p.Errors), 1},
		{"ops/s", p.OpsPerSec, 2},
		{"p50", p.P50Ms, 2},
		{"p99", p.P99Ms, 4},
		{"max", p.MaxMs, 4},
		{"cpu/op", p.CPUPerOpMs, 2}, // 8 ms of CPU over 4 ops
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	t.Run("NoOps", func(t *testing.T) {
		p := newPoint("read", 1, time.Second, nil, 5, nodes)
		if p.Ops != 0 || p.OpsPerSec != 0 || p.P99Ms != 0 || p.CPUPerOpMs != 0 {
			t.Fatalf("got %+v", p)
		}
	})
}

func TestWriteTable(t *testing.T) {
	rep := &report{Points: []point{
		{Workload: "write", Concurrency: 16, OpsPerSec: 2429.4, P50Ms: 5.851, P99Ms: 18.59, Errors: 0,
			Nodes:      []nodeStat{{CPUSeconds: 2.71, RSSMiB: 64.2, HWMMiB: 70}, {CPUSeconds: 2.8, RSSMiB: 64, HWMMiB: 64}},
			CPUPerOpMs: 0.2259, LoaderCPUSeconds: 1.49},
		{Workload: "read-local", Concurrency: 1, OpsPerSec: 100, P50Ms: 0.1, P99Ms: 0.4, Errors: 3},
	}}
	var buf bytes.Buffer
	writeTable(&buf, rep)
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows, got:\n%s", buf.String())
	}
	for i, want := range [][]string{
		{"workload", "c", "ops/s", "p50", "ms", "p99", "ms", "errors", "node", "CPU", "s", "node", "RSS", "MiB", "node", "HWM", "MiB", "CPU/op", "ms", "loader", "CPU", "s"},
		{"write", "16", "2429", "5.85", "18.59", "0", "2.7,2.8", "64,64", "70,64", "0.226", "1.5"},
		{"read-local", "1", "100", "0.10", "0.40", "3", "-", "-", "-", "-", "0.0"},
	} {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("line %d = %q, want fields %q", i, lines[i], want)
		}
	}
}

func TestReportJSON(t *testing.T) {
	rep := &report{DurationS: 1, ValueSize: 100, Keys: 10, Targets: []string{"http://a"}, Points: []point{
		{Workload: "read", Concurrency: 2, Ops: 5, OpsPerSec: 5, Nodes: []nodeStat{{ID: 1, PID: 42, CPUSeconds: 0.5}}, CPUPerOpMs: 100},
		{Workload: "write", Concurrency: 2, Ops: 5},
	}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Points []map[string]any `json:"points"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"workload", "c", "ops", "errors", "ops_per_s", "p50_ms", "p99_ms", "nodes", "cpu_per_op_ms"} {
		if _, ok := raw.Points[0][key]; !ok {
			t.Errorf("point JSON lacks %q: %s", key, b)
		}
	}
	if _, ok := raw.Points[1]["nodes"]; ok {
		t.Errorf("a point without process figures has nodes: %s", b)
	}
	var back report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Points[0].Nodes[0].PID != 42 || back.Points[0].CPUPerOpMs != 100 {
		t.Fatalf("round trip lost data: %+v", back.Points[0])
	}
}

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"OK", "1234 (demo) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0", 3 * time.Second, false},
		{"SpacesInName", "1234 (a b) c) R 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0", 100 * time.Millisecond, false},
		{"ErrNoName", "1234 demo S 1", 0, true},
		{"ErrShort", "1234 (demo) S 1 2 3", 0, true},
		{"ErrNotNumber", "1234 (demo) S 1 1234 1234 0 -1 4194560 100 0 0 0 x 50 0", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("parseStatCPU = %v, %v; want %v, err %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseStatusMem(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		rss, hwm uint64
		wantErr  bool
	}{
		{"OK", "Name:\tdemo\nVmPeak:\t 9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n", 1 << 20, 2 << 20, false},
		{"ErrMissing", "Name:\tdemo\nVmRSS:\t 1024 kB\n", 0, 0, true},
		{"ErrUnit", "VmHWM:\t 2 MB\nVmRSS:\t 1 MB\n", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rss, hwm, err := parseStatusMem([]byte(tc.in))
			if (err != nil) != tc.wantErr || rss != tc.rss || hwm != tc.hwm {
				t.Fatalf("parseStatusMem = %d, %d, %v; want %d, %d, err %v", rss, hwm, err, tc.rss, tc.hwm, tc.wantErr)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	t.Run("Defaults", func(t *testing.T) {
		o, err := parseFlags(nil, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(o.load.Workloads, ",") != "write,read,read-local" || len(o.load.Concurrency) != 3 ||
			o.load.Duration != 10*time.Second || o.load.ValueSize != 100 || o.load.Keys != 1000 || o.targets != nil {
			t.Fatalf("defaults: %+v", o)
		}
	})
	t.Run("Targets", func(t *testing.T) {
		o, err := parseFlags([]string{"-targets", "http://a/, http://b", "-c", "4"}, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(o.targets, " ") != "http://a http://b" || len(o.load.Concurrency) != 1 || o.load.Concurrency[0] != 4 {
			t.Fatalf("got %+v", o)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"ErrWorkload", []string{"-workloads", "write,scan"}, `unknown workload "scan"`},
		{"ErrConcurrency", []string{"-c", "1,0"}, `"0" is not a positive integer`},
		{"ErrDuration", []string{"-d", "0s"}, "-d must be positive"},
		{"ErrKeys", []string{"-keys", "0"}, "-keys must be at least 1"},
		{"ErrArgs", []string{"extra"}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
