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

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string, within time.Duration) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(within))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxyBlackholeStallsAndHealResumesIntact(t *testing.T) {
	p, err := NewProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
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
	p, err := NewProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
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
