package transport

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkForwardStream measures one forwarded write's round trip on the
// stream (frame out, the leader's handler, answer back) against a loopback
// echo leader, with 1 to 128 writes in flight: the cost of forwarding
// without raft behind it.
func BenchmarkForwardStream(b *testing.B) {
	for _, inFlight := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("inflight=%d", inFlight), func(b *testing.B) {
			srv := echoLeader(b, nil, nil)
			f := NewForwarder(2, "", 5*time.Second, nil)
			defer f.Close()
			body := make([]byte, 100)
			if _, err := f.Forward(context.Background(), srv.URL, 7, body); err != nil {
				b.Fatal(err) // opens the stream outside the timing
			}
			work := make(chan struct{}, b.N)
			for range b.N {
				work <- struct{}{}
			}
			close(work)
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range inFlight {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range work {
						resp, err := f.Forward(context.Background(), srv.URL, 7, body)
						if err != nil || resp.Status != 200 {
							b.Errorf("forward: %+v, %v", resp, err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
