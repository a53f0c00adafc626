package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// catchUpResult is how a new member caught up.
type catchUpResult struct {
	Node         uint64 `json:"node"`   // the id it was given; 0: never seen
	Via          string `json:"via"`    // the member URL given to its -join
	Sender       uint64 `json:"sender"` // the leader when it started
	TargetCommit uint64 `json:"target_commit"`
	// Seconds is from its start until its applied index reached
	// TargetCommit; the whole bounded wait when TimedOut.
	Seconds  float64 `json:"seconds"`
	TimedOut bool    `json:"timed_out,omitempty"`
	Applied  uint64  `json:"applied"` // the last applied index seen
	// From its log, seconds after its start; -1: not logged.
	JoinedS            float64 `json:"joined_s"`
	SnapshotInstalledS float64 `json:"snapshot_installed_s"`
	SnapshotIndex      uint64  `json:"snapshot_index,omitempty"` // the one installed
	// PromotedS is when its status first said it is no longer a learner,
	// after its start; -1: not seen before the bounded wait ended.
	PromotedS float64 `json:"promoted_s"`
	// SettleS is how long the bench then waited for every member's
	// snapshot count to stay unchanged for settleQuiet, at most
	// settleQuiet+2 s plus the catch-up time; Settled says whether they did.
	SettleS float64 `json:"settle_s"`
	Settled bool    `json:"settled"`
	// Received lists every "received snapshot" line: more than one means
	// a snapshot was streamed and not used.
	Received []receivedSnap `json:"received,omitempty"`
	// ViaSnapshot is "yes" when it logged receiving or installing a
	// snapshot or holds a received state file, else "not seen".
	ViaSnapshot string `json:"via_snapshot"`
}

// receivedSnap is one snapshot the new node logged receiving.
type receivedSnap struct {
	AtS   float64 `json:"at_s"` // after its start; -1: no time
	Index uint64  `json:"index"`
	Bytes int64   `json:"bytes"` // -1: not logged
}

// Log messages of a joining node.
const (
	joinedMsg    = "joined cluster"
	receivedMsg  = "received snapshot"
	installedMsg = "installed snapshot"
)

// catchUpPoll is how often the new member's status is read.
const catchUpPoll = 50 * time.Millisecond

// catchUp starts a fourth demo process with -join and an empty data
// directory and waits until it has applied the leader's commit index as of
// its start.
func (b *bencher) catchUp(ctx context.Context, c *cluster, cfg largeConfig, mem *memTable, missing *[]string) (catchUpResult, error) {
	res := newCatchUpResult()
	leader, url, err := b.leaderURL(ctx)
	if err != nil {
		return res, fmt.Errorf("catch-up: %w", err)
	}
	st, err := b.status(ctx, url)
	if err != nil {
		return res, fmt.Errorf("catch-up: leader status: %w", err)
	}
	res.Sender, res.Via, res.TargetCommit = leader, url, st.Commit
	mem.resetPeaks(missing)
	p, err := c.startJoiner(url)
	if err != nil {
		return res, fmt.Errorf("catch-up: %w", err)
	}
	start := time.Now()
	jt := target{URL: p.url, PID: p.cmd.Process.Pid}
	mem.add(jt)
	fmt.Fprintf(b.progress, "joining a new node via %s (leader %d, commit %d)\n", url, leader, res.TargetCommit)
	mon := startMonitor(c.Targets()) // the new node too

	wctx, cancel := context.WithTimeout(ctx, cfg.CatchUpTimeout)
	defer cancel()
	tick := time.NewTicker(catchUpPoll)
	defer tick.Stop()
	var waitErr error
	for {
		select {
		case <-p.exited:
			waitErr = fmt.Errorf("catch-up: the new node exited: %s (log %s)", p.cmd.ProcessState, p.logPath)
		default:
			sctx, scancel := context.WithTimeout(wctx, time.Second)
			js, err := b.status(sctx, p.url)
			scancel()
			if err == nil {
				res.Node, res.Applied = js.ID, js.Applied
				if js.Applied >= res.TargetCommit && js.ID != 0 {
					res.Seconds = time.Since(start).Seconds()
				}
			}
		}
		if waitErr != nil || res.Seconds > 0 {
			break
		}
		select {
		case <-wctx.Done():
			res.TimedOut, res.Seconds = true, time.Since(start).Seconds()
			*missing = append(*missing, fmt.Sprintf("catch-up timed out after %s at applied %d of %d (-catchup-timeout)",
				cfg.CatchUpTimeout, res.Applied, res.TargetCommit))
		case <-tick.C:
			continue
		}
		break
	}
	if waitErr == nil && !res.TimedOut {
		b.settle(wctx, &res, p, c.Targets()[:len(c.nodes)-1], start)
	}
	p.id = res.Node
	mem.setID(jt.PID, res.Node)
	mem.record(mon.stop(), phaseCatchUp)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if waitErr != nil {
		return res, waitErr
	}
	fmt.Fprintf(b.progress, "node %d caught up in %.2f s\n", res.Node, res.Seconds)

	recs, err := readLog(p.logPath)
	if err != nil {
		*missing = append(*missing, fmt.Sprintf("new node's log: %v", err))
	}
	joinerLogTimes(&res, recs, start)
	if sf := newestStateFile(res.Node, c.dataDir(len(c.nodes)-1)); sf.Received {
		res.ViaSnapshot = "yes"
	}
	return res, nil
}

func newCatchUpResult() catchUpResult {
	return catchUpResult{JoinedS: -1, SnapshotInstalledS: -1, PromotedS: -1, ViaSnapshot: "not seen"}
}

// settleQuiet is how long every member's snapshot count must stay the
// same before settle ends. A snapshot is counted once saved, so the quiet
// spell must outlast writing one (about 1.3 s for 100 MiB here).
const settleQuiet = 2 * time.Second

// settle waits, within ctx, until the new node is promoted from learner,
// then until no member's snapshot count has changed for settleQuiet or
// settleQuiet+2 s plus the catch-up time have passed, so that the memory
// peaks include the snapshots the membership changes cause (on this build
// the leader's fresh one for the new member, taken before the transfer).
func (b *bencher) settle(ctx context.Context, res *catchUpResult, p *proc, members []target, start time.Time) {
	tick := time.NewTicker(catchUpPoll)
	defer tick.Stop()
	bound := time.Now().Add(2*time.Second + secs(res.Seconds))
	for res.PromotedS < 0 && time.Now().Before(bound) {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := b.status(sctx, p.url)
		cancel()
		if err == nil && st.State != "" && st.State != "learner" {
			res.PromotedS = time.Since(start).Seconds()
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	t0 := time.Now()
	defer func() { res.SettleS = time.Since(t0).Seconds() }()
	counts := func() []float64 {
		out := make([]float64, len(members))
		for i, m := range members {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			body, err := b.do(sctx, http.MethodGet, m.URL+"/metrics", "")
			cancel()
			out[i] = -1
			if s := newMetricSample(time.Now(), body); err == nil && s.HasCount {
				out[i] = s.Count
			}
		}
		return out
	}
	last, steadySince := counts(), time.Now()
	bound = time.Now().Add(settleQuiet + 2*time.Second + secs(res.Seconds))
	for time.Now().Before(bound) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if now := counts(); !slices.Equal(now, last) || slices.Contains(now, -1) {
			last, steadySince = now, time.Now()
			continue
		}
		if time.Since(steadySince) >= settleQuiet {
			res.Settled = true
			return
		}
	}
}

// joinerLogTimes fills in what the new member's log says, as seconds after
// start.
func joinerLogTimes(res *catchUpResult, recs []logRecord, start time.Time) {
	since := func(r logRecord) float64 {
		if r.At.IsZero() {
			return -1
		}
		return r.At.Sub(start).Seconds()
	}
	if r, ok := firstRecord(recs, joinedMsg); ok {
		res.JoinedS = since(r)
	}
	for _, r := range recs {
		if r.Msg != receivedMsg {
			continue
		}
		rs := receivedSnap{AtS: since(r), Bytes: -1}
		rs.Index, _ = strconv.ParseUint(r.Attrs["index"], 10, 64)
		if v, err := strconv.ParseInt(r.Attrs["bytes"], 10, 64); err == nil {
			rs.Bytes = v
		}
		res.Received = append(res.Received, rs)
		res.ViaSnapshot = "yes"
	}
	if r, ok := firstRecord(recs, installedMsg); ok {
		res.SnapshotInstalledS, res.ViaSnapshot = since(r), "yes"
		res.SnapshotIndex, _ = strconv.ParseUint(r.Attrs["index"], 10, 64)
	}
}

// nodeStatus is the part of GET /raft/api/status the bench reads.
type nodeStatus struct {
	ID      uint64 `json:"id"`
	State   string `json:"state"`
	Leader  uint64 `json:"leader"`
	Commit  uint64 `json:"commit"`
	Applied uint64 `json:"applied"`
}

func (b *bencher) status(ctx context.Context, base string) (nodeStatus, error) {
	var env struct {
		Data nodeStatus `json:"data"`
	}
	body, err := b.do(ctx, http.MethodGet, base+"/raft/api/status", "")
	if err != nil {
		return env.Data, err
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		return env.Data, fmt.Errorf("status: %w", err)
	}
	return env.Data, nil
}

// dataDir is the data directory of the i-th node started (0-based).
func (c *cluster) dataDir(i int) string { return filepath.Join(c.dir, "n"+strconv.Itoa(i+1)) }

// startJoiner starts one more demo process on a free port with an empty
// data directory and -join member; the leader gives it a fresh id. Close
// stops it with the others.
func (c *cluster) startJoiner(member string) (*proc, error) {
	if c.opts.TLS {
		return nil, fmt.Errorf("joining a node to a TLS cluster is not supported")
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	i := len(c.nodes)
	args := []string{
		"-addr", "127.0.0.1:" + strconv.Itoa(ports[0]),
		"-data", c.dataDir(i),
		"-join", member,
	}
	if c.opts.Token != "" {
		args = append(args, "-token", c.opts.Token)
	}
	if c.opts.SnapshotCount > 0 {
		args = append(args, "-snapshot-count", strconv.FormatUint(c.opts.SnapshotCount, 10))
	}
	p, err := startProc(c.bin, args, filepath.Join(c.dir, fmt.Sprintf("n%d.log", i+1)))
	if err != nil {
		return nil, err
	}
	p.url = "http://127.0.0.1:" + strconv.Itoa(ports[0])
	c.nodes = append(c.nodes, p)
	return p, nil
}

// stateFile is the newest snapshot file in a node's data directory.
type stateFile struct {
	Node  uint64 `json:"node"`
	File  string `json:"file,omitempty"` // empty: none found
	Bytes int64  `json:"bytes"`
	Index uint64 `json:"index,omitempty"`
	// Received is set for a state file streamed from a leader
	// (<term>-<index>-<crc>.state).
	Received bool `json:"received,omitempty"`
	// Kind is "state" (snap/state/*.state) or "snap" (snap/*.snap, for
	// builds that keep the state inside the .snap file).
	Kind string `json:"kind,omitempty"`
}

// newestStateFile finds the snapshot file with the highest index under
// dataDir/snap/state, or else under dataDir/snap.
func newestStateFile(node uint64, dataDir string) stateFile {
	for _, d := range []struct{ dir, ext, kind string }{
		{filepath.Join(dataDir, "snap", "state"), ".state", "state"},
		{filepath.Join(dataDir, "snap"), ".snap", "snap"},
	} {
		ents, err := os.ReadDir(d.dir)
		if err != nil {
			continue
		}
		best := stateFile{Node: node}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), d.ext) || e.IsDir() {
				continue
			}
			idx, received, ok := parseSnapFileName(e.Name())
			if !ok || (best.File != "" && idx < best.Index) {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue
			}
			best = stateFile{Node: node, File: e.Name(), Bytes: fi.Size(), Index: idx, Received: received, Kind: d.kind}
		}
		if best.File != "" {
			return best
		}
	}
	return stateFile{Node: node, Bytes: -1}
}

// parseSnapFileName reads the index of <term>-<index>.state,
// <term>-<index>-<crc>.state (received) or <term>-<index>.snap, all hex.
func parseSnapFileName(name string) (index uint64, received, ok bool) {
	base := strings.TrimSuffix(strings.TrimSuffix(name, ".state"), ".snap")
	if base == name {
		return 0, false, false
	}
	f := strings.Split(base, "-")
	if len(f) != 2 && len(f) != 3 {
		return 0, false, false
	}
	for _, s := range f {
		if _, err := strconv.ParseUint(s, 16, 64); err != nil {
			return 0, false, false
		}
	}
	index, _ = strconv.ParseUint(f[1], 16, 64)
	return index, len(f) == 3, true
}
