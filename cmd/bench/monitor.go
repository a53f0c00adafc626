package main

import "time"

// sampleEvery is how often a monitor samples the nodes' VmRSS.
const sampleEvery = 200 * time.Millisecond

// monitor measures the local nodes' CPU time and memory over one point.
// VmHWM is a lifetime peak, so it also samples VmRSS to report the peak
// during the point.
type monitor struct {
	targets []target // those with a PID
	cpu0    []time.Duration
	rss     []uint64 // owned by the sampling goroutine until done is closed
	stopc   chan struct{}
	done    chan struct{}
}

// startMonitor starts sampling; stop must be called.
func startMonitor(targets []target) *monitor {
	m := &monitor{stopc: make(chan struct{}), done: make(chan struct{})}
	for _, t := range targets {
		if t.PID > 0 {
			m.targets = append(m.targets, t)
		}
	}
	m.rss = make([]uint64, len(m.targets))
	for _, t := range m.targets {
		cpu, _ := procCPU(t.PID) // a node that is gone shows 0
		m.cpu0 = append(m.cpu0, cpu)
	}
	m.sample()
	go func() { // exits when stop is called
		defer close(m.done)
		tick := time.NewTicker(sampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-tick.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *monitor) sample() {
	for i, t := range m.targets {
		if rss, _, err := procMem(t.PID); err == nil {
			m.rss[i] = max(m.rss[i], rss)
		}
	}
}

// stop ends sampling and returns each local node's figures, or nil when
// no target is a local process.
func (m *monitor) stop() []nodeStat {
	close(m.stopc)
	<-m.done
	m.sample()
	var out []nodeStat
	for i, t := range m.targets {
		n := nodeStat{ID: t.ID, PID: t.PID, RSSMiB: mib(m.rss[i])}
		if cpu, err := procCPU(t.PID); err == nil {
			n.CPUSeconds = (cpu - m.cpu0[i]).Seconds()
		}
		if _, hwm, err := procMem(t.PID); err == nil {
			n.HWMMiB = mib(hwm)
		}
		out = append(out, n)
	}
	return out
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
