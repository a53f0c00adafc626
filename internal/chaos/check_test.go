package chaos

import (
	"math"
	"testing"

	"github.com/anishathalye/porcupine"
)

func put(client int, key, val string, call, ret int64, unknown bool) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: KVInput{Put: true, Key: key, Value: val}, Call: call,
		Output: KVOutput{Unknown: unknown}, Return: ret}
}

func get(client int, key, val string, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: KVInput{Key: key}, Call: call, Output: KVOutput{Value: val}, Return: ret}
}

func TestCheckLinearizable(t *testing.T) {
	tests := []struct {
		name string
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"sequential", []porcupine.Operation{put(0, "k", "a", 0, 1, false), get(1, "k", "a", 2, 3)}, porcupine.Ok},
		{"stale read", []porcupine.Operation{put(0, "k", "a", 0, 1, false), put(0, "k", "b", 2, 3, false),
			get(1, "k", "a", 4, 5)}, porcupine.Illegal},
		{"lost acknowledged write", []porcupine.Operation{put(0, "k", "a", 0, 1, false), get(1, "k", "", 2, 3)}, porcupine.Illegal},
		{"indeterminate write seen later", []porcupine.Operation{put(0, "k", "a", 0, math.MaxInt64, true),
			get(1, "k", "a", 5, 6)}, porcupine.Ok},
		{"indeterminate write never seen", []porcupine.Operation{put(0, "k", "a", 0, math.MaxInt64, true),
			get(1, "k", "", 5, 6)}, porcupine.Ok},
		{"indeterminate write seen then unseen", []porcupine.Operation{put(0, "k", "a", 0, math.MaxInt64, true),
			get(1, "k", "a", 5, 6), get(1, "k", "", 7, 8)}, porcupine.Illegal},
		{"keys are independent", []porcupine.Operation{put(0, "x", "1", 0, 1, false), get(1, "y", "", 2, 3)}, porcupine.Ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, vis, err := CheckLinearizable(tt.h, t.TempDir(), 0)
			if err != nil || got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
			if got != porcupine.Ok && vis == "" {
				t.Fatal("no visualization written for a failed check")
			}
		})
	}
}
