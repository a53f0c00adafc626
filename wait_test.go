package embedraft

import "testing"

func TestWaitMap(t *testing.T) {
	type op struct {
		do    string // register, cancel or trigger
		key   string
		value int
		found bool // trigger: a waiter was there
	}
	tests := []struct {
		name string
		ops  []op
		want map[string]int // answers received, by registered key
		left int            // waiters still registered
	}{
		{"OK", []op{{do: "register", key: "a"}, {do: "trigger", key: "a", value: 7, found: true}}, map[string]int{"a": 7}, 0},
		{"TriggerWithoutWaiter", []op{{do: "trigger", key: "a", value: 7}}, map[string]int{}, 0},
		{"Cancelled", []op{{do: "register", key: "a"}, {do: "cancel", key: "a"}, {do: "trigger", key: "a", value: 7}}, map[string]int{}, 0},
		{"AnsweredOnce", []op{
			{do: "register", key: "a"},
			{do: "trigger", key: "a", value: 1, found: true},
			{do: "trigger", key: "a", value: 2}, // would block if it were delivered
		}, map[string]int{"a": 1}, 0},
		{"ByKey", []op{
			{do: "register", key: "a"}, {do: "register", key: "b"},
			{do: "trigger", key: "b", value: 2, found: true}, {do: "trigger", key: "c", value: 3},
		}, map[string]int{"b": 2}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWaitMap[string, int]()
			chans := map[string]<-chan int{}
			for _, o := range tt.ops {
				switch o.do {
				case "register":
					chans[o.key] = w.register(o.key)
				case "cancel":
					w.cancel(o.key)
				case "trigger":
					if found := w.trigger(o.key, o.value); found != o.found {
						t.Fatalf("trigger(%q) found a waiter: %v, want %v", o.key, found, o.found)
					}
				}
			}
			got := map[string]int{}
			for k, ch := range chans {
				select {
				case v := <-ch:
					got[k] = v
				default:
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("answers %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("answers %v, want %v", got, tt.want)
				}
			}
			if len(w.m) != tt.left {
				t.Fatalf("%d waiters left, want %d", len(w.m), tt.left)
			}
		})
	}
}
