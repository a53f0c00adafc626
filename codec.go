package embedraft

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/etcd/raft/v3/raftpb"
)

// Every raft entry the library writes is an envelope, so that the apply
// goroutine knows what an entry is for and whom to wake:
//
//	byte 0     envelope version (entryVersion or entryVersionKeyed)
//	byte 1     kind
//	uvarint    request id (0 for entries nobody waits on)
//	uvarint    origin node id
//	uvarint    version 2 only: the leader's clock, unix milliseconds
//	rest       payload (the service's data for kindPropose and kindInit)
//
// Version 2 (entryVersionKeyed) is written for a kindPropose or kindBatch
// entry that holds at least one write with an Idempotency-Key; its payload
// carries each write's key and answer object next to its data (batch.go,
// idempotency.go). Every other entry is still written as version 1, so a
// log without keyed writes reads as before.
const (
	entryVersion      = 1
	entryVersionKeyed = 2
)

type entryKind byte

const (
	kindPropose entryKind = 1 // payload goes to IService.Commit
	kindInit    entryKind = 2 // payload goes to IService.ResetSnap (switchover)
	kindNoop    entryKind = 3 // nothing to apply (barriers)
	// kindStarted records that members have a log (payload: uvarint ids):
	// a member that has acknowledged entries must never come back under
	// its id with an empty data directory.
	kindStarted entryKind = 4
	// kindBatch carries many client writes in one entry (batch.go).
	kindBatch entryKind = 5
)

// maxKind is the highest entry kind this version understands.
const maxKind = kindBatch

type entryEnvelope struct {
	Version byte // 0 means entryVersion
	Kind    entryKind
	ReqID   uint64
	Origin  uint64
	Time    int64 // version 2: the leader's unix milliseconds
	Payload []byte
}

var errBadEnvelope = errors.New("bad entry envelope")

func (e entryEnvelope) marshal() []byte {
	v := e.Version
	if v == 0 {
		v = entryVersion
	}
	buf := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(e.Payload))
	buf = append(buf, v, byte(e.Kind))
	buf = binary.AppendUvarint(buf, e.ReqID)
	buf = binary.AppendUvarint(buf, e.Origin)
	if v == entryVersionKeyed {
		buf = binary.AppendUvarint(buf, uint64(max(e.Time, 0)))
	}
	return append(buf, e.Payload...)
}

func unmarshalEntry(b []byte) (entryEnvelope, error) {
	var e entryEnvelope
	if len(b) < 2 {
		return e, fmt.Errorf("%w: %d bytes", errBadEnvelope, len(b))
	}
	if b[0] != entryVersion && b[0] != entryVersionKeyed {
		return e, fmt.Errorf("%w: version %d", errBadEnvelope, b[0])
	}
	e.Version = b[0]
	e.Kind = entryKind(b[1])
	if e.Version == entryVersionKeyed && e.Kind != kindPropose && e.Kind != kindBatch {
		return e, fmt.Errorf("%w: kind %d in version %d", errBadEnvelope, b[1], b[0])
	}
	if e.Kind < kindPropose || e.Kind > maxKind {
		return e, fmt.Errorf("%w: kind %d", errBadEnvelope, b[1])
	}
	rest := b[2:]
	var n int
	if e.ReqID, n = binary.Uvarint(rest); n <= 0 {
		return e, fmt.Errorf("%w: request id", errBadEnvelope)
	}
	rest = rest[n:]
	if e.Origin, n = binary.Uvarint(rest); n <= 0 {
		return e, fmt.Errorf("%w: origin", errBadEnvelope)
	}
	rest = rest[n:]
	if e.Version == entryVersionKeyed {
		t, n := binary.Uvarint(rest)
		if n <= 0 || t > 1<<62 {
			return e, fmt.Errorf("%w: time", errBadEnvelope)
		}
		e.Time, rest = int64(t), rest[n:]
	}
	e.Payload = rest
	return e, nil
}

// A snapshot's data is an envelope too: the membership (peer addresses,
// roles, ids ever used) travels next to the service's bytes, so a node that
// restarts after compaction or installs a snapshot knows every peer.
//
//	4 bytes    magic "ERS" + version
//	uvarint    length of the membership JSON
//	...        membership JSON
//	rest       the service's GetSnapshot (or GetInit) bytes
var snapMagic = [4]byte{'E', 'R', 'S', 1}

func marshalSnapshot(members []byte, service []byte) []byte {
	buf := make([]byte, 0, 4+binary.MaxVarintLen64+len(members)+len(service))
	buf = append(buf, snapMagic[:]...)
	buf = binary.AppendUvarint(buf, uint64(len(members)))
	buf = append(buf, members...)
	return append(buf, service...)
}

func unmarshalSnapshot(b []byte) (members, service []byte, err error) {
	if len(b) < 5 || [4]byte(b[:4]) != snapMagic {
		return nil, nil, errors.New("bad snapshot envelope: magic")
	}
	l, n := binary.Uvarint(b[4:])
	if n <= 0 || l > uint64(len(b)-4-n) {
		return nil, nil, errors.New("bad snapshot envelope: membership length")
	}
	start := 4 + n
	return b[start : start+int(l)], b[start+int(l):], nil
}

// confContext is the context of every conf change the library proposes: the
// member's id and address, so the log alone is enough to know every peer,
// and the request id and origin of the change, to wake whoever proposed it.
type confContext struct {
	ID     uint64 `json:"id"`
	Addr   string `json:"addr"`
	Req    uint64 `json:"req,omitempty"`
	Origin uint64 `json:"origin,omitempty"`
}

func (c confContext) marshal() []byte {
	b, _ := json.Marshal(c) // a struct of an int and a string always encodes
	return b
}

// marshalIDs and unmarshalIDs encode the member ids of a kindStarted entry.
func marshalIDs(ids []uint64) []byte {
	buf := binary.AppendUvarint(nil, uint64(len(ids)))
	for _, id := range ids {
		buf = binary.AppendUvarint(buf, id)
	}
	return buf
}

func unmarshalIDs(b []byte) ([]uint64, error) {
	n, l := binary.Uvarint(b)
	if l <= 0 || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: id count", errBadEnvelope)
	}
	b = b[l:]
	ids := make([]uint64, 0, n)
	for range n {
		id, l := binary.Uvarint(b)
		if l <= 0 || id == 0 || id > MaxMemberID {
			return nil, fmt.Errorf("%w: member id", errBadEnvelope)
		}
		ids = append(ids, id)
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: trailing bytes after ids", errBadEnvelope)
	}
	return ids, nil
}

// checkEntry reports why an entry from a peer could not be applied here
// (nil when it could): the apply side stops the node on an entry it cannot
// decode, so a peer message must not get one into the log.
func checkEntry(e raftpb.Entry) error {
	switch e.Type {
	case raftpb.EntryNormal:
		if len(e.Data) == 0 {
			return nil
		}
		env, err := unmarshalEntry(e.Data)
		if err == nil && env.Kind == kindStarted {
			_, err = unmarshalIDs(env.Payload)
		}
		if err == nil && (env.Kind == kindBatch || env.Kind == kindPropose) {
			_, err = env.writes()
		}
		return err
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := cc.Unmarshal(e.Data); err != nil {
			return fmt.Errorf("membership change: %w", err)
		}
		return checkConfChange(cc.AsV2())
	case raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := cc.Unmarshal(e.Data); err != nil {
			return fmt.Errorf("membership change: %w", err)
		}
		return checkConfChange(cc)
	default:
		return fmt.Errorf("entry type %d", e.Type)
	}
}

// checkConfChange accepts only the membership changes embedraft proposes:
// one simple change of a valid member id, with a context naming it.
// raft panics applying some others (leaving a joint config it is not in).
func checkConfChange(cc raftpb.ConfChangeV2) error {
	if len(cc.Changes) != 1 || cc.Transition != raftpb.ConfChangeTransitionAuto {
		return errors.New("membership change: not a single simple change")
	}
	ch := cc.Changes[0]
	switch ch.Type {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode, raftpb.ConfChangeRemoveNode,
		raftpb.ConfChangeUpdateNode:
	default:
		return fmt.Errorf("membership change: type %v", ch.Type)
	}
	if ch.NodeID == 0 || ch.NodeID > MaxMemberID {
		return fmt.Errorf("membership change: member id %d", ch.NodeID)
	}
	if len(cc.Context) > 0 {
		var ctx confContext
		if err := json.Unmarshal(cc.Context, &ctx); err != nil {
			return fmt.Errorf("membership change context: %w", err)
		}
		if ctx.Addr != "" && checkURL(ctx.Addr) != nil {
			return fmt.Errorf("membership change context: address %q", ctx.Addr)
		}
	}
	return nil
}
