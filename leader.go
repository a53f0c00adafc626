package embedraft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/embedraft/embedraft/transport"
)

// Running a request where the leader is: on this node when it leads,
// forwarded to the leader otherwise, and tried again on the next leader
// while the leader certainly did not act on it.

// viaLeader runs one request on the leader: local when this node leads,
// remote(lead) otherwise. Each reports retry when the leader certainly did
// not act on the request (it was not the leader, was closing, or could not
// be reached); viaLeader then waits for the next leader (pauseForLeader) and
// tries again, for at most LeaderWait after the first refusal (then
// ErrNoLeader). A closing, stopped or removed node starts no new attempt.
func viaLeader[T any](ctx context.Context, n *Node, local func() (T, bool, error), remote func(lead uint64) (T, bool, error)) (T, error) {
	var zero T
	var retryUntil time.Time
	for {
		// A closing node starts no new attempt (nothing was done yet: the
		// client may retry elsewhere); Close waits for the ones under way.
		if n.closed.Load() {
			return zero, fmt.Errorf("%w: node closing", ErrStopped)
		}
		switch n.Mode() {
		case ModeRemoved:
			return zero, ErrRemoved
		case ModeStandalone:
			return zero, ErrNotCluster
		}
		select {
		case <-n.stopc:
			return zero, ErrStopped
		default:
		}
		lead, err := n.waitLeader(ctx)
		if err != nil {
			return zero, err
		}
		var res T
		retry := false
		if lead == n.id {
			res, retry, err = local()
		} else {
			res, retry, err = remote(lead)
		}
		if !retry {
			return res, err
		}
		if retryUntil.IsZero() {
			retryUntil = time.Now().Add(n.cfg.LeaderWait)
		} else if time.Now().After(retryUntil) {
			return zero, fmt.Errorf("%w: leader %d did not accept the request", ErrNoLeader, lead)
		}
		if err := n.pauseForLeader(ctx, lead); err != nil {
			return zero, err
		}
	}
}

// toLeader sends a request to lead with send, given lead's base URL, and
// decodes the answer's data into out. A successful answer is not decoded
// when out is nil (the caller passes it on as it is). retry is true when
// lead certainly did not act on the request: it is not a known member, it
// was never reached, or it refused as not the leader or closing. A request
// that may have reached it without an answer is an unknown outcome.
func (n *Node) toLeader(ctx context.Context, lead uint64, out interface{},
	send func(base string) (*transport.Response, error)) (resp *transport.Response, retry bool, err error) {
	m, ok := n.reg.member(lead)
	if !ok || m.Addr == "" {
		return nil, true, nil
	}
	resp, err = send(n.dialURL(m.Addr))
	switch {
	case errors.Is(err, transport.ErrBusy):
		return nil, false, fmt.Errorf("%w: the queue to leader %d is full", ErrBusy, lead)
	case errors.Is(err, transport.ErrNotSent):
		n.log.Debug("leader unreachable", "leader", lead, "err", err)
		return nil, true, nil
	case err != nil && ctx.Err() != nil:
		return nil, false, fmt.Errorf("%w: %w", ErrUnknownOutcome, ctx.Err())
	case err != nil:
		return nil, false, fmt.Errorf("%w: forward to leader %d: %v", ErrUnknownOutcome, lead, err)
	}
	if resp.Status/100 == 2 && out == nil {
		return resp, false, nil
	}
	err = decodeAnswer(resp, out)
	if errors.Is(err, ErrNotLeader) || (errors.Is(err, ErrStopped) && !errors.Is(err, ErrUnknownOutcome)) {
		// Refused before acting (not the leader, or a leader that is
		// closing): try the next leader.
		return nil, true, nil
	}
	return resp, false, err
}

// pauseForLeader waits until the leader is no longer lead, or a couple of
// ticks (a refusing leader may just be finishing a transfer).
func (n *Node) pauseForLeader(ctx context.Context, lead uint64) error {
	t := time.NewTimer(2 * n.cfg.TickInterval)
	defer t.Stop()
	for {
		_, changed := n.leaderSig.watch()
		if n.leader.Load() != lead {
			return nil
		}
		select {
		case <-changed:
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-n.stopc:
			return ErrStopped
		}
	}
}

// remoteError is an error answered by another node, carrying its status.
type remoteError struct {
	status int
	code   string
	msg    string
}

func (e *remoteError) Error() string { return e.msg }

// Unwrap maps the remote code back to the sentinel it came from.
func (e *remoteError) Unwrap() error {
	for _, c := range errorCodes {
		if c.code == e.code {
			return c.err
		}
	}
	return nil
}

// decodeAnswer decodes a node's envelope answer into out, or its error.
func decodeAnswer(resp *transport.Response, out interface{}) error {
	var env struct {
		Code  string          `json:"code"`
		Data  json.RawMessage `json:"data"`
		Error string          `json:"error"`
	}
	if err := json.Unmarshal(resp.Body, &env); err != nil {
		return fmt.Errorf("%w: peer answered %d with a body that is not JSON", ErrUnknownOutcome, resp.Status)
	}
	if resp.Status/100 != 2 || env.Code != codeOK {
		return &remoteError{status: resp.Status, code: env.Code, msg: env.Error}
	}
	if out != nil && len(env.Data) > 0 {
		if err := json.Unmarshal(env.Data, out); err != nil {
			return fmt.Errorf("decode peer answer: %w", err)
		}
	}
	return nil
}

// waitLeader returns the current leader, waiting at most LeaderWait for one.
func (n *Node) waitLeader(ctx context.Context) (uint64, error) {
	return n.waitLeaderWhere(ctx, func(lead uint64) bool { return lead != 0 })
}

func (n *Node) waitLeaderWhere(ctx context.Context, ok func(uint64) bool) (uint64, error) {
	deadline := time.NewTimer(n.cfg.LeaderWait)
	defer deadline.Stop()
	for {
		_, changed := n.leaderSig.watch()
		if lead := n.leader.Load(); ok(lead) {
			return lead, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return 0, ErrNoLeader
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-n.stopc:
			return 0, ErrStopped
		}
	}
}
