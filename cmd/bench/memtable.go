package main

import "fmt"

// Phases whose memory peak is reported.
const (
	phaseLoad = iota
	phaseCatchUp
)

// memTable collects each node's resident memory: right after the preload,
// and its peak during the load (snapshots being made) and during the
// catch-up (a snapshot being sent and received).
type memTable struct {
	nodes []memNode
	// hwmReset is set while every VmHWM was reset at the start of the
	// current phase, so that VmHWM at its end is the phase's peak.
	hwmReset bool
	hwmNoted bool // missing says the reset failed
}

type memNode struct {
	target
	afterPreload uint64 // VmRSS, bytes; 0: not running then
	peak         [2]float64
}

func newMemTable(targets []target) *memTable {
	m := &memTable{}
	for _, t := range targets {
		rss, _, _ := procMem(t.PID)
		m.nodes = append(m.nodes, memNode{target: t, afterPreload: rss})
	}
	return m
}

func (m *memTable) add(t target) { m.nodes = append(m.nodes, memNode{target: t}) }

func (m *memTable) setID(pid int, id uint64) {
	for i := range m.nodes {
		if m.nodes[i].PID == pid {
			m.nodes[i].ID = id
		}
	}
}

// resetPeaks resets every node's VmHWM; when that fails the peaks are
// only the sampled VmRSS, and missing says so once.
func (m *memTable) resetPeaks(missing *[]string) {
	m.hwmReset = true
	for _, n := range m.nodes {
		if err := resetHWM(n.PID); err != nil {
			m.hwmReset = false
			if !m.hwmNoted {
				*missing = append(*missing, errHWM+": "+err.Error())
				m.hwmNoted = true
			}
			return
		}
	}
}

const errHWM = "cannot reset VmHWM (/proc/<pid>/clear_refs): peaks are the largest VmRSS sampled every 200 ms"

// record takes a phase's monitor figures.
func (m *memTable) record(stats []nodeStat, phase int) {
	for _, s := range stats {
		for i := range m.nodes {
			if m.nodes[i].PID != s.PID {
				continue
			}
			p := s.RSSMiB
			if m.hwmReset {
				p = max(p, s.HWMMiB)
			}
			m.nodes[i].peak[phase] = p
		}
	}
}

// memRow is one node's memory as reported.
type memRow struct {
	Node            uint64  `json:"node"`
	Role            string  `json:"role"`
	AfterPreloadMiB float64 `json:"after_preload_mib"`   // VmRSS; 0 for the new node
	LoadPeakMiB     float64 `json:"load_peak_mib"`       // 0 for the new node
	CatchUpPeakMiB  float64 `json:"catch_up_peak_mib"`   // 0: not running
	PeakMiB         float64 `json:"peak_mib"`            // the larger of the two
	PeakPerLive     float64 `json:"peak_per_live"`       // PeakMiB over the live state
	PeakPerPreload  float64 `json:"peak_per_preload"`    // PeakMiB over AfterPreloadMiB; 0 for the new node
	HWMReset        bool    `json:"hwm_reset,omitempty"` // peaks include VmHWM, not just samples
}

// rows reports every node; leader is the leader during the load, sender
// the one when the new node joined.
func (m *memTable) rows(leader, sender, joiner uint64, live int64) []memRow {
	var out []memRow
	for _, n := range m.nodes {
		r := memRow{
			Node:            n.ID,
			Role:            role(n.ID, leader, sender, joiner),
			AfterPreloadMiB: mib(n.afterPreload),
			LoadPeakMiB:     n.peak[phaseLoad],
			CatchUpPeakMiB:  n.peak[phaseCatchUp],
			HWMReset:        m.hwmReset,
		}
		r.PeakMiB = max(r.LoadPeakMiB, r.CatchUpPeakMiB)
		if live > 0 {
			r.PeakPerLive = r.PeakMiB / mib(uint64(live))
		}
		if r.AfterPreloadMiB > 0 {
			r.PeakPerPreload = r.PeakMiB / r.AfterPreloadMiB
		}
		out = append(out, r)
	}
	return out
}

func role(id, leader, sender, joiner uint64) string {
	switch {
	case id == joiner && id != 0:
		return "new node (receiver)"
	case id == sender && id == leader:
		return "leader (sender)"
	case id == sender:
		return fmt.Sprintf("sender (leader after node %d)", leader)
	case id == leader:
		return "leader during the load"
	default:
		return "follower"
	}
}
