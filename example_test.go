package embedraft_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/embedraft/embedraft"
)

// counter is the smallest useful IService: a replicated integer.
type counter struct {
	mu    sync.Mutex
	total int
}

// PreProcessData validates the body (a decimal number) on the leader.
func (c *counter) PreProcessData(body []byte) (interface{}, []byte, error) {
	if _, err := strconv.Atoi(string(body)); err != nil {
		return nil, nil, fmt.Errorf("body must be a number: %w", err)
	}
	return "added " + string(body), body, nil
}

// Commit applies a committed entry on every node.
func (c *counter) Commit(data []byte) error {
	d, err := strconv.Atoi(string(data))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.total += d
	c.mu.Unlock()
	return nil
}

func (c *counter) GetSnapshot() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []byte(strconv.Itoa(c.total)), nil
}

func (c *counter) GetInit() ([]byte, error) { return c.GetSnapshot() }

func (c *counter) ResetSnap(data []byte) error {
	t := 0
	if len(data) > 0 {
		var err error
		if t, err = strconv.Atoi(string(data)); err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.total = t
	c.mu.Unlock()
	return nil
}

func (c *counter) SetRaft(embedraft.IRaftSender) {}

// A one-member cluster: the node writes a WAL, elects itself and answers a
// write only after it is committed and applied. Add members later, or
// bootstrap several with Config.Peers.
func Example() {
	dir, _ := os.MkdirTemp("", "embedraft-example")
	defer os.RemoveAll(dir)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")

	svc := &counter{}
	node, err := embedraft.New(embedraft.Config{
		AdvertiseURL: "http://" + ln.Addr().String(),
		DataDir:      dir,
		Cluster:      true,
		TickInterval: 10 * time.Millisecond,
	}, svc)
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := &http.Server{Handler: node.Handler()} // mount it on your own router
	go srv.Serve(ln)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obj, err := node.Send(ctx, []byte("40")) // a json.RawMessage: PreProcessData's object
	fmt.Printf("%s %v\n", obj, err)
	_, err = node.Send(ctx, []byte("two"))
	fmt.Println(err)
	obj, _ = node.Send(ctx, []byte("2"))
	fmt.Printf("%s %d %s\n", obj, svc.total, node.Status().Mode)

	_ = node.Close(ctx) // close the node first: it ends rafthttp's streams
	_ = srv.Shutdown(ctx)
	// Output:
	// "added 40" <nil>
	// embedraft: bad request: body must be a number: strconv.Atoi: parsing "two": invalid syntax
	// "added 2" 42 cluster
}
