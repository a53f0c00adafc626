package embedraft

import (
	"context"
	"encoding/binary"
	"fmt"
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
	done  chan error // buffered 1: raft's answer to the entry's proposal
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
		size := len(first.data)
	fill:
		for len(batch) < maxBatchWrites && size < maxBatchBytes {
			select {
			case p := <-n.propc:
				batch = append(batch, p)
				size += len(p.data)
			default:
				break fill
			}
		}
		var data []byte
		if len(batch) == 1 {
			data = entryEnvelope{Kind: kindPropose, ReqID: first.reqID, Origin: n.id, Payload: first.data}.marshal()
		} else {
			data = entryEnvelope{Kind: kindBatch, Origin: n.id, Payload: marshalBatch(batch)}.marshal()
		}
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

// marshalBatch encodes a kindBatch payload: uvarint count, then for each
// write its uvarint request id, uvarint length and data.
func marshalBatch(batch []proposal) []byte {
	size := binary.MaxVarintLen64
	for _, p := range batch {
		size += 2*binary.MaxVarintLen64 + len(p.data)
	}
	buf := binary.AppendUvarint(make([]byte, 0, size), uint64(len(batch)))
	for _, p := range batch {
		buf = binary.AppendUvarint(buf, p.reqID)
		buf = binary.AppendUvarint(buf, uint64(len(p.data)))
		buf = append(buf, p.data...)
	}
	return buf
}

// batchedWrite is one write of a kindBatch entry.
type batchedWrite struct {
	reqID uint64
	data  []byte
}

func unmarshalBatch(b []byte) ([]batchedWrite, error) {
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
		size, l := binary.Uvarint(b)
		if l <= 0 || size > uint64(len(b)-l) {
			return nil, fmt.Errorf("%w: batch write length", errBadEnvelope)
		}
		b = b[l:]
		out = append(out, batchedWrite{reqID: id, data: b[:size:size]})
		b = b[size:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes after batch", errBadEnvelope)
	}
	return out, nil
}
