package embedraft_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/embedraft/embedraft"
)

// Work that must run on the leader only: OnLeader starts it when this node
// becomes leader and cancels its ctx when it stops being leader. Subscribe
// delivers the same changes, and membership changes, as events.
func ExampleNode_OnLeader() {
	dir, _ := os.MkdirTemp("", "embedraft-example")
	defer os.RemoveAll(dir)
	node, err := embedraft.New(embedraft.Config{
		AdvertiseURL: "http://127.0.0.1:1", // a one-member cluster dials no one
		DataDir:      dir,
		Cluster:      true,
		TickInterval: 10 * time.Millisecond,
	}, &counter{})
	if err != nil {
		fmt.Println(err)
		return
	}
	events, cancel := node.Subscribe(16)
	defer cancel()
	if ev, ok := (<-events).(embedraft.LeaderChanged); ok {
		fmt.Println("leader:", ev.Leader, "is me:", ev.IsLeader)
	}

	started, ended := make(chan uint64), make(chan struct{})
	stop := node.OnLeader(func(ctx context.Context, term uint64) {
		started <- term // the term is a fencing token
		<-ctx.Done()    // cancelled when this node stops leading
		close(ended)
	})
	defer stop()
	fmt.Println("leading, term > 0:", <-started > 0)
	_ = node.Close(context.Background())
	<-ended
	fmt.Println("stepped down")
	for ev := range events { // closed once the node stopped
		fmt.Printf("%T\n", ev)
	}
	// Output:
	// leader: 1 is me: true
	// leading, term > 0: true
	// stepped down
	// embedraft.Stopped
}
