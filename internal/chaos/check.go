package chaos

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/anishathalye/porcupine"
)

// KVModel is a key-value register model partitioned by key: per key, the
// state is the current value ("" = absent).
var KVModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range history {
			k := op.Input.(KVInput).Key
			if _, ok := byKey[k]; !ok {
				order = append(order, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, k := range order {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		in, out := input.(KVInput), output.(KVOutput)
		if in.Put {
			return true, in.Value
		}
		return out.Value == state.(string), state
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(KVInput), output.(KVOutput)
		switch {
		case in.Put && out.Unknown:
			return fmt.Sprintf("put(%s, %s) -> ?", in.Key, in.Value)
		case in.Put:
			return fmt.Sprintf("put(%s, %s)", in.Key, in.Value)
		default:
			return fmt.Sprintf("get(%s) -> %q", in.Key, out.Value)
		}
	},
	DescribeState: func(state interface{}) string { return fmt.Sprintf("%q", state) },
}

// CheckLinearizable checks the history; on anything but Ok it writes the
// porcupine visualization into dir and says where.
func CheckLinearizable(history []porcupine.Operation, dir string, timeout time.Duration) (porcupine.CheckResult, string, error) {
	history = pruneUnobserved(history)
	res, info := porcupine.CheckOperationsVerbose(KVModel, history, timeout)
	if res == porcupine.Ok {
		return res, "", nil
	}
	path := filepath.Join(dir, "porcupine.html")
	if err := porcupine.VisualizePath(KVModel, info, path); err != nil {
		return res, "", err
	}
	return res, path, nil
}

// pruneUnobserved drops indeterminate writes whose value no read returned.
// Every write's value is unique, so this keeps the verdict: such a write
// either never happened, or happened and was overwritten before any read
// (removing it from a linearization leaves the reads valid); and a history
// without it linearizes with it too, placed after everything (its return
// time is unbounded). Without the pruning, a few hundred indeterminate
// writes after a full-cluster kill make the search explode.
func pruneUnobserved(history []porcupine.Operation) []porcupine.Operation {
	seen := map[[2]string]bool{}
	for _, op := range history {
		if in := op.Input.(KVInput); !in.Put {
			seen[[2]string{in.Key, op.Output.(KVOutput).Value}] = true
		}
	}
	out := history[:0:0]
	for _, op := range history {
		in := op.Input.(KVInput)
		if in.Put && op.Output.(KVOutput).Unknown && !seen[[2]string{in.Key, in.Value}] {
			continue
		}
		out = append(out, op)
	}
	return out
}
