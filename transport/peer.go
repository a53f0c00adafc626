package transport

import (
	"strconv"
	"time"

	etcdtransport "go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.uber.org/zap"
)

// PeerConfig describes the local member to rafthttp.
type PeerConfig struct {
	ID          uint64
	ClusterID   uint64
	URL         string
	Raft        rafthttp.Raft
	Snapshotter *snap.Snapshotter
	Logger      *zap.Logger
	// TLSInfo configures rafthttp's dials to https peers (TLS.EtcdTLSInfo);
	// empty without a certificate.
	TLSInfo etcdtransport.TLSInfo
}

// NewPeerTransport builds and starts rafthttp's transport. Its Handler serves
// /raft, /raft/stream/, /raft/snapshot and /raft/probing; Stop ends every
// goroutine it started.
func NewPeerTransport(c PeerConfig) (*rafthttp.Transport, error) {
	urls, err := types.NewURLs([]string{c.URL})
	if err != nil {
		return nil, err
	}
	t := &rafthttp.Transport{
		Logger:      c.Logger,
		DialTimeout: 2 * time.Second,
		ID:          types.ID(c.ID),
		URLs:        urls,
		ClusterID:   types.ID(c.ClusterID),
		Raft:        c.Raft,
		Snapshotter: c.Snapshotter,
		ServerStats: stats.NewServerStats("", ""),
		LeaderStats: stats.NewLeaderStats(c.Logger, strconv.FormatUint(c.ID, 10)),
		ErrorC:      make(chan error, 1),
		TLSInfo:     c.TLSInfo,
	}
	if err := t.Start(); err != nil {
		return nil, err
	}
	return t, nil
}
