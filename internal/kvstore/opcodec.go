package kvstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Entry data. PreProcessData encodes a write for the log in binary, as the
// peers' benchmark services do, so applying it on every member costs no
// JSON decoding:
//
//	byte       opSet or opAdd
//	uvarint    len(key), then the key
//	rest       opSet: the value; opAdd: varint N
//
// Entries written by earlier versions hold the Op as JSON (they start with
// '{'); decodeOp reads both.
const (
	opSet byte = 1
	opAdd byte = 2
)

// encodeOp is the entry data of a checked Op.
func encodeOp(op Op) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(op.Key)+len(op.Value))
	kind := opSet
	if op.Add != nil {
		kind = opAdd
	}
	b = append(b, kind)
	b = binary.AppendUvarint(b, uint64(len(op.Key)))
	b = append(b, op.Key...)
	if op.Add != nil {
		return binary.AppendVarint(b, *op.Add)
	}
	return append(b, op.Value...)
}

// decodeOp reads entry data written by encodeOp, or by earlier versions.
func decodeOp(data []byte) (Op, error) {
	var op Op
	if len(data) > 0 && data[0] == '{' {
		if err := json.Unmarshal(data, &op); err != nil {
			return op, fmt.Errorf("decode entry: %w", err)
		}
		return op, nil
	}
	if len(data) < 2 || (data[0] != opSet && data[0] != opAdd) {
		return op, errors.New("decode entry: unknown encoding")
	}
	kind, rest := data[0], data[1:]
	l, w := binary.Uvarint(rest)
	if w <= 0 || l > uint64(len(rest)-w) {
		return op, errors.New("decode entry: bad key length")
	}
	op.Key, rest = string(rest[w:w+int(l)]), rest[w+int(l):]
	if kind == opSet {
		op.Value = string(rest)
		return op, nil
	}
	n, w := binary.Varint(rest)
	if w <= 0 || w != len(rest) {
		return op, errors.New("decode entry: bad add")
	}
	op.Add = &n
	return op, nil
}

// parseSimpleOp decodes the common shape of a write body without the JSON
// decoder: exactly {"key":"K","value":"V"} or {"key":"K"}, where K and V
// hold only printable ASCII other than '"' and '\'. It reports false for
// anything else, which ParseOp then decodes in full: for the bodies it
// accepts, the result is what the decoder gives.
func parseSimpleOp(body []byte) (Op, bool) {
	var op Op
	rest, ok := bytes.CutPrefix(body, []byte(`{"key":"`))
	if !ok {
		return op, false
	}
	key, rest, ok := simpleString(rest)
	if !ok {
		return op, false
	}
	op.Key = key
	if string(rest) == "}" {
		return op, true
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"value":"`)); !ok {
		return op, false
	}
	value, rest, ok := simpleString(rest)
	if !ok || string(rest) != "}" {
		return op, false
	}
	op.Value = value
	return op, true
}

// simpleString reads a JSON string's contents up to its closing quote when
// they need no unescaping, and returns what follows the quote.
func simpleString(b []byte) (s string, rest []byte, ok bool) {
	for i, c := range b {
		switch {
		case c == '"':
			return string(b[:i]), b[i+1:], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return "", nil, false
		}
	}
	return "", nil, false
}
