package embedraft

import (
	"context"
	"errors"
	"testing"
	"time"
)

// viaLeader's choice between local and remote, its retries and its refusals,
// on a node whose leader and mode are set by hand.
func TestViaLeader(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		name    string
		lead    uint64 // this node is 1
		mode    string
		closing bool
		ctx     context.Context
		// refusals before an attempt goes through with err.
		refusals int
		err      error
		want     int   // result: 7 local, 8 remote, 0 none
		calls    int   // attempts made; -1: at least 2
		wantErr  error // nil: err
	}{
		{name: "OK/Local", lead: 1, want: 7, calls: 1},
		{name: "OK/Remote", lead: 2, want: 8, calls: 1},
		{name: "OK/RemoteAfterRefusals", lead: 2, refusals: 2, want: 8, calls: 3},
		{name: "ErrNotRetried", lead: 2, err: ErrUnknownOutcome, want: 8, calls: 1},
		{name: "ErrNoLeader/RefusedForLeaderWait", lead: 1, refusals: 1 << 30, calls: -1, wantErr: ErrNoLeader},
		{name: "ErrNoLeader/Ctx", lead: 0, ctx: canceled, wantErr: context.Canceled},
		{name: "ErrStopped/Closing", lead: 1, closing: true, wantErr: ErrStopped},
		{name: "ErrRemoved", lead: 1, mode: ModeRemoved, wantErr: ErrRemoved},
		{name: "ErrNotCluster", lead: 1, mode: ModeStandalone, wantErr: ErrNotCluster},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := &Node{id: 1, cfg: Config{LeaderWait: 100 * time.Millisecond, TickInterval: 5 * time.Millisecond},
				stopc: make(chan struct{}), leaderSig: newIndexNotifier(0)}
			n.mode.Store(ModeCluster)
			if tt.mode != "" {
				n.mode.Store(tt.mode)
			}
			n.leader.Store(tt.lead)
			n.closed.Store(tt.closing)
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			calls := 0
			attempt := func(v int) (int, bool, error) {
				calls++
				if calls <= tt.refusals {
					return 0, true, ErrNotLeader
				}
				return v, false, tt.err
			}
			got, err := viaLeader(ctx, n, func() (int, bool, error) { return attempt(7) },
				func(lead uint64) (int, bool, error) { return attempt(8) })
			wantErr := tt.err
			if tt.wantErr != nil {
				wantErr = tt.wantErr
			}
			if (wantErr == nil) != (err == nil) || !errors.Is(err, wantErr) || got != tt.want ||
				(tt.calls >= 0 && calls != tt.calls) || (tt.calls < 0 && calls < 2) {
				t.Fatalf("got %d, %v after %d attempts; want %d, %v after %d", got, err, calls, tt.want, wantErr, tt.calls)
			}
		})
	}
}
