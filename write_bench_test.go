package embedraft_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// BenchmarkProposeWaitApply measures a write proposed, committed and
// applied on a one-member cluster (WAL fsync included), from parallel
// writers on the leader.
func BenchmarkProposeWaitApply(b *testing.B) {
	c := tc.NewSingle(b, func(cfg *embedraft.Config) { cfg.Cluster = true; cfg.TickInterval = 100 * time.Millisecond })
	benchWrites(b, c.Members[0].Node)
}

// BenchmarkForwardedWrite measures writes sent to a follower of a 3-member
// cluster, which forwards them to the leader over its forwarding stream and
// answers once it has applied them.
func BenchmarkForwardedWrite(b *testing.B) {
	c := tc.NewStatic(b, 3, func(cfg *embedraft.Config) { cfg.TickInterval = 100 * time.Millisecond })
	benchWrites(b, c.Followers()[0].Node)
}

func benchWrites(b *testing.B, n *embedraft.Node) {
	var seq atomic.Int64
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Appendf(nil, `{"key":"k%d","value":"v"}`, seq.Add(1))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := n.Send(ctx, body); err != nil {
				b.Error(err)
			}
			cancel()
		}
	})
}
