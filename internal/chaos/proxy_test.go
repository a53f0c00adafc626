package chaos

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes every line back.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // exits when the listener closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }() // exits when the peer closes
		}
	}()
	return ln.Addr().String()
}

// throughProxy starts an echo server behind a proxy and connects to it;
// everything is closed when the test ends.
func throughProxy(t *testing.T) (*Proxy, net.Conn, *bufio.Reader) {
	t.Helper()
	p, err := NewProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c, bufio.NewReader(c)
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string, within time.Duration) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(within))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxyBlackholeStallsAndHealResumesIntact(t *testing.T) {
	p, c, r := throughProxy(t)
	if got, err := roundTrip(t, c, r, "one", 2*time.Second); err != nil || got != "one\n" {
		t.Fatalf("before fault: %q %v", got, err)
	}
	p.SetBlackhole(true)
	if got, err := roundTrip(t, c, r, "two", 200*time.Millisecond); err == nil {
		t.Fatalf("blackholed connection delivered %q", got)
	}
	p.Heal()
	// The stalled bytes arrive after healing: nothing was dropped mid-stream.
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "two\n" {
		t.Fatalf("after heal: %q %v", got, err)
	}
}

func TestProxyDelayAndDrop(t *testing.T) {
	p, c, r := throughProxy(t)
	p.SetDelay(50*time.Millisecond, 0)
	start := time.Now()
	if got, err := roundTrip(t, c, r, "slow", 2*time.Second); err != nil || got != "slow\n" {
		t.Fatalf("delayed: %q %v", got, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("round trip took %v through a 50ms-per-direction delay", d)
	}
	p.DropConns()
	if _, err := roundTrip(t, c, r, "gone", 2*time.Second); err == nil {
		t.Fatal("dropped connection still works")
	}
}
