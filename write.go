package embedraft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/raft/v3"

	"github.com/embedraft/embedraft/transport"
)

// writeResult is the outcome of a successful write.
type writeResult struct {
	object interface{}
	// forwarded is the leader's answer when a follower forwarded the write;
	// the HTTP route passes it to the client unchanged.
	forwarded *transport.Response
	index     uint64
}

// Send proposes body as a client write and returns, once the entry is
// committed and applied on this node, the JSON of PreProcessData's object
// (or of ResultCommitter's result): the "data" of the answer of
// POST /raft/api/set, the same type on the leader, on a follower (which
// has the leader's answer) and on a standalone node: a json.RawMessage,
// or nil when the object is nil. A ctx from
// WithIdempotencyKey gives the write an Idempotency-Key. See IRaftSender.
func (n *Node) Send(ctx context.Context, body []byte) (interface{}, error) {
	key := idempotencyKeyFrom(ctx)
	if key != "" {
		if err := CheckIdempotencyKey(key); err != nil {
			return nil, err
		}
	}
	res, err := n.write(ctx, key, body)
	if err != nil {
		return nil, err
	}
	if res.forwarded != nil {
		var env struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(res.forwarded.Body, &env); err != nil {
			return nil, fmt.Errorf("decode leader answer: %w", err)
		}
		if env.Data == nil {
			return nil, nil
		}
		return env.Data, nil
	}
	switch obj := res.object.(type) {
	case nil:
		return nil, nil // the route's answer has no "data"
	case json.RawMessage:
		return obj, nil // an Idempotency-Key's recorded answer
	default:
		b, err := json.Marshal(obj)
		if err != nil {
			// What the route answers (500), and a follower gets from the leader.
			return nil, fmt.Errorf("encode answer: %w", err)
		}
		return json.RawMessage(b), nil
	}
}

func (n *Node) checkBody(body []byte) error {
	if len(body) == 0 {
		return fmt.Errorf("%w: empty body", ErrBadRequest)
	}
	if int64(len(body)) > n.cfg.MaxRequestBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), n.cfg.MaxRequestBytes)
	}
	return nil
}

// write runs a client write in whatever mode the node is in. key is its
// Idempotency-Key, already checked ("" for none).
func (n *Node) write(ctx context.Context, key string, body []byte) (_ writeResult, err error) {
	defer n.metrics.observeWrite(time.Now(), &err)
	if err := n.checkBody(body); err != nil {
		return writeResult{}, err
	}
	if err := n.stopped(); err != nil {
		return writeResult{}, err
	}
	if res, done, err := n.writeStandalone(key, body); done {
		return res, err
	}
	switch n.Mode() {
	case ModeRemoved:
		return writeResult{}, ErrRemoved
	case ModeCluster:
	default:
		return writeResult{}, ErrStopped
	}
	n.inflight.Add(1)
	defer n.inflight.Add(-1)
	var pre *preprocessed // this node's PreProcessData result, reused across retries
	return viaLeader(ctx, n, func() (writeResult, bool, error) {
		if res, ok, err := n.shortcut(key); ok {
			return res, false, err
		}
		if err := n.busyApplying(); err != nil {
			return writeResult{}, false, err
		}
		if pre == nil {
			var err error
			if pre, err = n.preprocess(key, body); err != nil {
				return writeResult{}, false, err
			}
		}
		res, err := n.propose(ctx, pre)
		// Not proposed: leadership moved or raft refused it for now (a
		// leader transfer is in progress).
		return res, errors.Is(err, ErrNotLeader), err
	}, func(lead uint64) (writeResult, bool, error) {
		// This node answers only once it has applied the write itself.
		if err := n.busyApplying(); err != nil {
			return writeResult{}, false, err
		}
		return n.forward(ctx, lead, key, body)
	})
}

// preprocessed is PreProcessData's answer for one request.
type preprocessed struct {
	object interface{}
	data   []byte
	key    string // Idempotency-Key
	// objJSON is object's JSON, recorded with key as the answer to every
	// retry (not needed by a ResultCommitter, whose result is recorded).
	objJSON []byte
}

func (n *Node) preprocess(key string, body []byte) (*preprocessed, error) {
	obj, data, err := n.svc.PreProcessData(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	pre := &preprocessed{object: obj, data: data, key: key}
	if _, rc := n.svc.(ResultCommitter); key != "" && !rc {
		if pre.objJSON, err = json.Marshal(obj); err != nil {
			return nil, fmt.Errorf("encode the answer of PreProcessData: %w", err)
		}
	}
	return pre, nil
}

// writeStandalone applies a write directly when the node is standalone. done
// is false when the node is not (or no longer) standalone.
func (n *Node) writeStandalone(key string, body []byte) (res writeResult, done bool, err error) {
	n.gate.RLock()
	defer n.gate.RUnlock()
	if n.Mode() != ModeStandalone {
		return res, false, nil
	}
	if err := n.stopped(); err != nil {
		return res, true, err
	}
	if res, ok, err := n.shortcut(key); ok {
		return res, true, err
	}
	pre, err := n.preprocess(key, body)
	if err != nil {
		return res, true, err
	}
	n.commitMu.Lock()
	defer n.commitMu.Unlock()
	if err := n.markStandaloneWrite(); err != nil {
		return res, true, err
	}
	// Keys of standalone writes are remembered in memory, by this node's
	// clock, until a restart or the switch to a cluster.
	r := n.applyWrite(0, time.Now().UnixMilli(), batchedWrite{key: key, obj: pre.objJSON, data: pre.data})
	if r.err != nil {
		return res, true, fmt.Errorf("%w: %v", ErrCommit, r.err)
	}
	return r.answer(pre.object), true, nil
}

// proposeLocal runs a forwarded write on the leader: PreProcessData, then
// propose. It never retries: a refusal goes back to the forwarding node.
func (n *Node) proposeLocal(ctx context.Context, key string, body []byte) (writeResult, error) {
	if n.closed.Load() {
		return writeResult{}, fmt.Errorf("%w: leader closing", ErrStopped)
	}
	if raft.StateType(n.raftState.Load()) != raft.StateLeader {
		return writeResult{}, ErrNotLeader
	}
	if res, ok, err := n.shortcut(key); ok {
		return res, err
	}
	if err := n.busyApplying(); err != nil {
		return writeResult{}, err
	}
	n.inflight.Add(1)
	defer n.inflight.Add(-1)
	pre, err := n.preprocess(key, body)
	if err != nil {
		return writeResult{}, err
	}
	return n.propose(ctx, pre)
}

// propose proposes a preprocessed write and waits until this node has
// applied it (proposeWait). ErrNotLeader or ErrBusy mean nothing was
// proposed.
func (n *Node) propose(ctx context.Context, pre *preprocessed) (writeResult, error) {
	if raft.StateType(n.raftState.Load()) != raft.StateLeader {
		return writeResult{}, ErrNotLeader
	}
	_, r, err := n.proposeWait(ctx, "write", func(reqID uint64) error {
		p := proposal{reqID: reqID, data: pre.data, key: pre.key, obj: pre.objJSON, done: make(chan error, 1)}
		select {
		case n.propc <- p:
		default:
			n.metrics.proposalFailed()
			return fmt.Errorf("%w: the leader's proposal queue is full", ErrBusy)
		}
		// Once queued, the write may be proposed whatever happens to ctx.
		select {
		case err := <-p.done:
			if err != nil {
				n.metrics.proposalFailed()
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stopc:
			return ErrStopped
		}
	})
	if err != nil {
		return writeResult{}, err
	}
	if r.err != nil {
		return writeResult{index: r.index}, fmt.Errorf("%w: %v", ErrCommit, r.err)
	}
	return r.answer(pre.object), nil
}

// forward sends a write to the leader over the forwarding stream and,
// when it succeeded, waits until this node has applied the leader's index
// so the client can read its write here. retry is true when the leader
// certainly did not propose it (toLeader).
func (n *Node) forward(ctx context.Context, lead uint64, key string, body []byte) (writeResult, bool, error) {
	resp, retry, err := n.toLeader(ctx, lead, nil, func(base string) (*transport.Response, error) {
		n.metrics.forwardedWrite()
		// The stream carries bodies only: the key rides in front of it.
		return n.fwd.Forward(ctx, base, n.clusterID.Load(), wrapForward(key, body))
	})
	if resp == nil {
		return writeResult{}, retry, err
	}
	if err != nil {
		// The leader's refusal (or unknown outcome), kept for the HTTP
		// route to pass on unchanged.
		return writeResult{forwarded: resp}, false, err
	}
	if resp.Index > 0 {
		if err := n.applied.wait(ctx, resp.Index, n.stopc); err != nil {
			return writeResult{}, false, fmt.Errorf("%w: committed at index %d but not yet applied here: %w",
				ErrUnknownOutcome, resp.Index, err)
		}
	}
	return writeResult{forwarded: resp, index: resp.Index}, false, nil
}
