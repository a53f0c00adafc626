// Command demo is a replicated key-value service built on embedraft.
//
//	go run ./demo                       # a standalone node on 127.0.0.1:8080
//	go run ./demo -addr 127.0.0.1:8081 -id 1 -peers 1=http://127.0.0.1:8081,2=...,3=...
//
// Writes: POST /raft/api/set {"key":"k","value":"v"}. Reads: GET /kv/{key}
// and GET /kv, with ?consistency=local or linearizable (the default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/kvstore"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "host:port to listen on")
	advertise := fs.String("advertise", "", "URL other nodes use to reach this node (default http://<addr>, https://<addr> with -cert)")
	dataDir := fs.String("data", "", "data directory (default ./data/<port>)")
	id := fs.Uint64("id", 0, "node id (with -peers, or after addNode returned one)")
	peers := fs.String("peers", "", `static bootstrap "1=http://127.0.0.1:8081,2=http://127.0.0.1:8082,3=..."`)
	join := fs.String("join", "", "URL of any member (or standalone node) to join")
	cluster := fs.Bool("cluster", false, "start as a one-member cluster instead of standalone")
	restore := fs.String("restore", "", "backup FILE (GET /raft/api/backup) to start a new cluster (new cluster id) from, into "+
		"an empty -data: with -cluster a one-member cluster, or with -peers (every member given the same FILE and -peers). "+
		"Given again on the restored -data, the same FILE just restarts")
	token := fs.String("token", os.Getenv("EMBEDRAFT_TOKEN"), "cluster secret (also EMBEDRAFT_TOKEN)")
	snapCount := fs.Uint64("snapshot-count", embedraft.DefaultSnapshotCount, "applied entries between snapshots")
	forceNew := fs.Bool("force-new-cluster", false, "restart from this data directory as a one-member cluster "+
		"after losing quorum (keeps every write, its id and the cluster id; drops the other members). One-shot")
	certFile := fs.String("cert", "", "PEM certificate: serve https, and use https for peers (re-read when it changes)")
	keyFile := fs.String("key", "", "PEM private key of -cert")
	caFile := fs.String("ca", "", "PEM CA bundle: require client certificates signed by it on peer and admin routes, "+
		"and verify peers' certificates with it (re-read when it changes)")
	pprofFlag := fs.Bool("pprof", false, "serve net/http/pprof under /debug/pprof/ (open to anyone who can reach -addr)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	_, port, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", *addr, err)
	}
	if *dataDir == "" {
		*dataDir = filepath.Join("data", port)
	}
	peerMap, err := embedraft.ParsePeers(*peers)
	if err != nil {
		return fmt.Errorf("-peers: %w", err)
	}
	if *advertise == "" {
		// http://<addr>; a node listening on every interface cannot
		// advertise that, so it takes its own -peers entry. A member that
		// moved keeps its old -peers and gives its new -addr.
		scheme := "http://"
		if *certFile != "" {
			scheme = "https://"
		}
		*advertise = scheme + *addr
		host, _, _ := net.SplitHostPort(*addr)
		if u, ok := peerMap[*id]; ok && (host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()) {
			*advertise = u
		}
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	store := kvstore.New()
	// Standalone writes are made durable by the store itself; the file is
	// loaded first and written only while the node is standalone.
	if err := os.MkdirAll(*dataDir, 0o750); err != nil {
		return err
	}
	var nodeRef atomic.Pointer[embedraft.Node]
	standalone := func() bool { n := nodeRef.Load(); return n != nil && n.Mode() == embedraft.ModeStandalone }
	if err := store.OpenStandaloneLog(filepath.Join(*dataDir, "standalone.log"), standalone); err != nil {
		return err
	}
	defer store.CloseStandaloneLog()
	// Data written by a demo that predates the library's own record of
	// standalone writes: refuse what would discard it, as the library does.
	if _, err := os.Stat(filepath.Join(*dataDir, "wal")); (*join != "" || len(peerMap) > 0 || *restore != "") && os.IsNotExist(err) && store.Len() > 0 {
		return fmt.Errorf("%s holds %d keys written in standalone mode; joining another cluster, a static bootstrap or a restore "+
			"would discard them (start it alone with -cluster, or let the others -join it, or use a new -data)",
			*dataDir, store.Len())
	}
	dial, err := parseDialOverride(os.Getenv("EMBEDRAFT_TEST_DIAL"))
	if err != nil {
		return err
	}
	node, err := embedraft.New(embedraft.Config{
		ID:              *id,
		AdvertiseURL:    strings.TrimSuffix(*advertise, "/"),
		DataDir:         *dataDir,
		Peers:           peerMap,
		Join:            *join,
		Cluster:         *cluster,
		Token:           *token,
		SnapshotCount:   *snapCount,
		ForceNewCluster: *forceNew,
		Restore:         *restore,
		DialOverride:    dial,
		CertFile:        *certFile,
		KeyFile:         *keyFile,
		CAFile:          *caFile,
		Logger:          logger,
		Registerer:      prometheus.DefaultRegisterer, // GET /metrics serves the default registry
	}, store)
	if err != nil {
		return err
	}
	if *token == "" && *caFile == "" {
		logger.Warn("NO -token GIVEN: this node's peer and admin routes are open to anyone who can reach " +
			*addr + "; any such client can change the membership or forge raft messages. " +
			"Start every node with -token SECRET (or EMBEDRAFT_TOKEN), or with -cert, -key and -ca (mutual TLS), " +
			"outside a trusted network.")
	}
	nodeRef.Store(node)
	store.SetReader(node)

	mux := http.NewServeMux()
	mux.Handle("/kv", store)
	mux.Handle("/kv/", store)
	mux.Handle("/", node.Handler())
	if *pprofFlag {
		mountPprof(mux)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srv.TLSConfig = node.ServerTLSConfig() // nil without -cert
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		_ = node.Close(context.Background())
		return err
	}
	st := node.Status()
	logger.Info("listening", "addr", ln.Addr().String(), "tls", srv.TLSConfig != nil, "id", st.ID, "mode", st.Mode, "data", *dataDir)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { // exits when srv is shut down
		if srv.TLSConfig != nil {
			serveErr <- srv.ServeTLS(ln, "", "") // the certificate comes from TLSConfig, reloaded per handshake
			return
		}
		serveErr <- srv.Serve(ln)
	}()

	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err = <-serveErr:
	case <-node.Done():
		// The node stopped by itself: a fatal storage error, or it found
		// out its data was lost. (A removed node keeps serving its status.)
		err = node.Err()
		if err == nil && node.Mode() == embedraft.ModeRemoved {
			<-ctx.Done()
		}
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Stop accepting requests first, so nothing is served by a closing node;
	// Shutdown then waits for the open requests, and rafthttp's streams (long
	// requests) end only once the node's transport stops, so the node is
	// closed while Shutdown waits.
	shutDone := make(chan error, 1)
	go func() { shutDone <- srv.Shutdown(shutCtx) }() // returns when every request ended or shutCtx does
	if cerr := node.Close(shutCtx); cerr != nil && err == nil {
		err = cerr
	}
	<-shutDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// parseDialOverride reads the test-only EMBEDRAFT_TEST_DIAL setting,
// "advertisedURL=dialURL,advertisedURL=dialURL": fault-injection tests route
// every pair of nodes through a proxy this way.
func parseDialOverride(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	m := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		from, to, ok := strings.Cut(pair, "=")
		if !ok || from == "" || to == "" {
			return nil, fmt.Errorf("EMBEDRAFT_TEST_DIAL: %q is not advertisedURL=dialURL", pair)
		}
		m[strings.TrimSuffix(from, "/")] = strings.TrimSuffix(to, "/")
	}
	return m, nil
}
