package chaos

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Proxy is a TCP proxy for one direction of one pair of nodes: node i
// dials node j through Proxy(i, j). It can blackhole traffic, delay it with
// jitter, and drop every open connection.
//
// A blackhole stalls connections instead of discarding bytes: in a real
// partition TCP retransmits, so a connection either resumes intact after
// the partition or times out; it never delivers a stream with a hole in
// it (which would hand a peer garbage no network produces).
type Proxy struct {
	ln     net.Listener
	target string

	mu        sync.Mutex
	blackhole bool
	delay     time.Duration
	jitter    time.Duration
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

// NewProxy listens on a loopback port and forwards to target (host:port).
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept() // exits when Close closes the listener
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetBlackhole drops (true) or passes (false) all traffic.
func (p *Proxy) SetBlackhole(on bool) {
	p.mu.Lock()
	p.blackhole = on
	p.mu.Unlock()
}

// SetDelay delays every chunk by d plus up to jitter.
func (p *Proxy) SetDelay(d, jitter time.Duration) {
	p.mu.Lock()
	p.delay, p.jitter = d, jitter
	p.mu.Unlock()
}

// Heal removes every fault.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.blackhole, p.delay, p.jitter = false, 0, 0
	p.mu.Unlock()
}

// DropConns closes every open connection (both sides see a reset).
func (p *Proxy) DropConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.DropConns()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c) // exits when either side closes
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	done := make(chan struct{}, 2)
	go func() { p.pipe(server, client); done <- struct{}{} }() // exits when a side closes
	go func() { p.pipe(client, server); done <- struct{}{} }() // exits when a side closes
	<-done
	client.Close()
	server.Close()
	<-done
}

// waitPassable blocks while the proxy is blackholed and returns the delay
// to apply; ok is false once the proxy is closed.
func (p *Proxy) waitPassable() (d, j time.Duration, ok bool) {
	for {
		p.mu.Lock()
		hole, closed := p.blackhole, p.closed
		d, j = p.delay, p.jitter
		p.mu.Unlock()
		if closed {
			return 0, 0, false
		}
		if !hole {
			return d, j, true
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pipe copies src to dst chunk by chunk, applying the current faults.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			d, j, ok := p.waitPassable()
			if !ok {
				return
			}
			if d > 0 || j > 0 {
				time.Sleep(d + time.Duration(rand.Int64N(int64(j)+1)))
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}
