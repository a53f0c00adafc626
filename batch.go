package embedraft

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"
)

// Proposal batching. Every client write on the leader is handed to one
// proposer goroutine, which takes all the writes waiting and proposes them
// as one raft entry (kindBatch: each write keeps its own request id and
// payload, and the apply loop commits them one by one, in order, waking each
// writer). One entry for many writes means one raft step, one WAL record
// and one append to replicate instead of one per write; with one write
// waiting, it is proposed at once as before (kindPropose).

// Batch limits: a batch closes when either is reached.
const (
	maxBatchWrites = 512
	maxBatchBytes  = 1 << 20
	// proposalQueue bounds the writes waiting for the proposer.
	proposalQueue = 4096
)

// proposal is one write waiting for the proposer.
type proposal struct {
	reqID uint64
	data  []byte
	// key is the write's Idempotency-Key ("" for none) and obj the JSON of
	// PreProcessData's object, recorded as the key's answer (idempotency.go).
	key  string
	obj  []byte
	done chan error // buffered 1: raft's answer to the entry's proposal
}

// proposeLoop is the proposer: it exits when stopc is closed.
func (n *Node) proposeLoop() {
	defer n.loops.Done()
	batch := make([]proposal, 0, maxBatchWrites)
	for {
		var first proposal
		select {
		case first = <-n.propc:
		case <-n.stopc:
			return
		}
		batch = append(batch[:0], first)
		size := first.size()
	fill:
		for len(batch) < maxBatchWrites && size < maxBatchBytes {
			select {
			case p := <-n.propc:
				batch = append(batch, p)
				size += p.size()
			default:
				break fill
			}
		}
		var stopped bool
		if batch, stopped = n.gatherWhilePersisting(batch, size); stopped {
			return
		}
		data := n.batchEntry(batch)
		// Bounded, and ended by stop: raft blocks a proposal while no
		// leader is known.
		ctx, cancel := context.WithTimeout(n.stopCtx, n.cfg.ForwardTimeout)
		err := n.rn.Propose(ctx, data)
		cancel()
		for _, p := range batch {
			p.done <- err
		}
	}
}

// gatherWhilePersisting adds to batch the writes that come while the raft
// loop writes the WAL: an entry proposed meanwhile waits for the next Ready
// anyway, and one entry for all of them means one message per follower
// instead of one per batch. It returns at once when the raft loop is not
// writing; stopped is true when the node stops.
func (n *Node) gatherWhilePersisting(batch []proposal, size int) (_ []proposal, stopped bool) {
	select {
	case <-n.persisted: // a wake-up left from an earlier write
	default:
	}
	if !n.persisting.Load() {
		return batch, false
	}
	for len(batch) < maxBatchWrites && size < maxBatchBytes {
		select {
		case p := <-n.propc:
			batch = append(batch, p)
			size += p.size()
		case <-n.persisted:
			return batch, false
		case <-n.stopc:
			return batch, true
		}
	}
	return batch, false
}

// batchEntry encodes the entry for a batch of writes: version 1 when no
// write has an Idempotency-Key (the format of earlier releases), else
// version 2, stamped with this leader's clock for the key table's window.
func (n *Node) batchEntry(batch []proposal) []byte {
	keyed := false
	for _, p := range batch {
		keyed = keyed || p.key != ""
	}
	env := entryEnvelope{Kind: kindBatch, Origin: n.id}
	if keyed {
		env.Version, env.Time = entryVersionKeyed, time.Now().UnixMilli()
	}
	if len(batch) == 1 {
		env.Kind, env.ReqID = kindPropose, batch[0].reqID
		if !keyed {
			env.Payload = batch[0].data
			return env.marshal()
		}
		buf := make([]byte, 0, batch[0].size())
		buf = appendBytes(buf, []byte(batch[0].key))
		buf = appendBytes(buf, batch[0].obj)
		env.Payload = append(buf, batch[0].data...)
		return env.marshal()
	}
	env.Payload = marshalBatch(batch, keyed)
	return env.marshal()
}

func (p proposal) size() int { return len(p.data) + len(p.key) + len(p.obj) }

func appendBytes(buf, b []byte) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	return append(buf, b...)
}

// marshalBatch encodes a kindBatch payload: uvarint count, then for each
// write its uvarint request id, then (keyed, version 2 only) its key and
// answer object, each as uvarint length and bytes, then its uvarint length
// and data.
func marshalBatch(batch []proposal, keyed bool) []byte {
	size := binary.MaxVarintLen64
	for _, p := range batch {
		size += 4*binary.MaxVarintLen64 + p.size()
	}
	buf := binary.AppendUvarint(make([]byte, 0, size), uint64(len(batch)))
	for _, p := range batch {
		buf = binary.AppendUvarint(buf, p.reqID)
		if keyed {
			buf = appendBytes(buf, []byte(p.key))
			buf = appendBytes(buf, p.obj)
		}
		buf = appendBytes(buf, p.data)
	}
	return buf
}

// batchedWrite is one write of a kindPropose or kindBatch entry.
type batchedWrite struct {
	reqID uint64
	key   string // Idempotency-Key, version 2 only
	obj   []byte // JSON of PreProcessData's object, version 2 only
	data  []byte
}

// writes decodes the writes of a kindPropose or kindBatch entry.
func (e entryEnvelope) writes() ([]batchedWrite, error) {
	keyed := e.Version == entryVersionKeyed
	if e.Kind == kindBatch {
		return unmarshalBatch(e.Payload, keyed)
	}
	w := batchedWrite{reqID: e.ReqID, data: e.Payload}
	if keyed {
		b := e.Payload
		key, b, err := cutBytes(b, "key")
		if err != nil {
			return nil, err
		}
		w.obj, w.data, err = cutBytes(b, "answer")
		if err != nil {
			return nil, err
		}
		w.key = string(key)
	}
	return []batchedWrite{w}, nil
}

// cutBytes splits a uvarint-length-prefixed field off b.
func cutBytes(b []byte, what string) (field, rest []byte, err error) {
	size, l := binary.Uvarint(b)
	if l <= 0 || size > uint64(len(b)-l) {
		return nil, nil, fmt.Errorf("%w: %s length", errBadEnvelope, what)
	}
	b = b[l:]
	return b[:size:size], b[size:], nil
}

func unmarshalBatch(b []byte, keyed bool) ([]batchedWrite, error) {
	n, l := binary.Uvarint(b)
	if l <= 0 || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: batch count", errBadEnvelope)
	}
	b = b[l:]
	out := make([]batchedWrite, 0, n)
	for range n {
		id, l := binary.Uvarint(b)
		if l <= 0 {
			return nil, fmt.Errorf("%w: batch request id", errBadEnvelope)
		}
		b = b[l:]
		w := batchedWrite{reqID: id}
		var err error
		if keyed {
			var key []byte
			if key, b, err = cutBytes(b, "batch key"); err != nil {
				return nil, err
			}
			if w.obj, b, err = cutBytes(b, "batch answer"); err != nil {
				return nil, err
			}
			w.key = string(key)
		}
		if w.data, b, err = cutBytes(b, "batch write"); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes after batch", errBadEnvelope)
	}
	return out, nil
}
