package embedraft_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
)

// BenchmarkStandaloneWrite compares POST /raft/api/set on a standalone
// node with a bare net/http handler doing the same JSON decode
// (kvstore.ParseOp) and map store, both over real loopback HTTP from 16
// parallel clients. The node's store has no standalone log here (the
// demo's fsyncs each standalone write): this measures what the library
// adds. The performance issue's target: embedraft >= 0.8x bare.
func BenchmarkStandaloneWrite(b *testing.B) {
	b.Run("bare", func(b *testing.B) {
		var mu sync.Mutex
		m := map[string]string{}
		benchHTTPWrites(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			op, perr := kvstore.ParseOp(body)
			if err != nil || perr != nil {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			mu.Lock()
			m[op.Key] = op.Value
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"code": "000000", "data": op})
		}))
	})
	b.Run("embedraft", func(b *testing.B) {
		node, err := embedraft.New(embedraft.Config{AdvertiseURL: "http://127.0.0.1:1", DataDir: b.TempDir()}, kvstore.New())
		if err != nil {
			b.Fatal(err)
		}
		defer node.Close(b.Context())
		benchHTTPWrites(b, node.Handler())
	})
}

func benchHTTPWrites(b *testing.B, h http.Handler) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) // ends on Close below
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	url := "http://" + ln.Addr().String() + "/raft/api/set"
	var seq atomic.Int64
	b.SetParallelism(8) // 16 clients on 2 cores
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Appendf(nil, `{"key":"k%d","value":"0123456789012345678901234567890123456789"}`, seq.Add(1)%1000)
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
