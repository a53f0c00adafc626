package embedraft_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	"github.com/embedraft/embedraft/internal/testcluster"
)

// answer is a write's outcome as the client sees it.
type answer struct {
	Status int
	Code   string
	Data   string // the "data" JSON, compacted
	Error  string
}

// setWithKey posts body to m's /raft/api/set with an Idempotency-Key.
func setWithKey(t *testing.T, c *testcluster.Cluster, m *testcluster.Member, key, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, m.URL+"/raft/api/set", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set(embedraft.HeaderIdempotencyKey, key)
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		t.Fatalf("post to member %d: %v", m.ID, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var env struct {
		Code  string          `json:"code"`
		Data  json.RawMessage `json:"data"`
		Error string          `json:"error"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("member %d answered %d %q: %v", m.ID, resp.StatusCode, b, err)
	}
	var data bytes.Buffer
	if len(env.Data) > 0 {
		_ = json.Compact(&data, env.Data)
	}
	return answer{Status: resp.StatusCode, Code: env.Code, Data: data.String(), Error: env.Error}
}

func addBody(key string, n int) string { return fmt.Sprintf(`{"key":%q,"add":%d}`, key, n) }

func valueJSON(key, v string) string { return fmt.Sprintf(`{"key":%q,"value":%q}`, key, v) }

// converged waits for equal states and returns key's value.
func converged(c *testcluster.Cluster, key string) string {
	return c.WaitConverged(10 * time.Second)[key]
}

// sameTables checks that every running member holds the same key table.
func sameTables(t *testing.T, c *testcluster.Cluster) {
	t.Helper()
	c.WaitConverged(10 * time.Second)
	ms := c.Running()
	want := embedraft.IdempotencyTableForTest(ms[0].Node)
	for _, m := range ms[1:] {
		if got := embedraft.IdempotencyTableForTest(m.Node); got != want {
			t.Fatalf("key tables differ:\nmember %d: %s\nmember %d: %s", ms[0].ID, want, m.ID, got)
		}
	}
}

func TestAdd(t *testing.T) {
	c := testcluster.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	fol := c.Followers()[0]
	t.Run("OK", func(t *testing.T) {
		if a := setWithKey(t, c, lead, "", addBody("n", 5)); a.Status != 200 || a.Data != valueJSON("n", "5") {
			t.Fatalf("add 5 to an absent key: %+v", a)
		}
		if a := setWithKey(t, c, fol, "", addBody("n", -7)); a.Status != 200 || a.Data != valueJSON("n", "-2") {
			t.Fatalf("add -7 via a follower: %+v", a)
		}
		if a := setWithKey(t, c, lead, "", `{"key":"n","add":0}`); a.Status != 200 || a.Data != valueJSON("n", "-2") {
			t.Fatalf("add 0: %+v", a)
		}
		if v := converged(c, "n"); v != "-2" {
			t.Fatalf("value %q, want -2", v)
		}
	})
	t.Run("SetUnchanged", func(t *testing.T) {
		if a := setWithKey(t, c, fol, "", valueJSON("s", "v")); a.Status != 200 || a.Data != valueJSON("s", "v") {
			t.Fatalf("set: %+v", a)
		}
	})
	t.Run("ErrNotInteger", func(t *testing.T) {
		c.MustSet(lead, "word", "abc")
		for _, m := range []*testcluster.Member{lead, fol} {
			if a := setWithKey(t, c, m, "", addBody("word", 1)); a.Status != 400 {
				t.Fatalf("add to a non-integer via member %d: %+v", m.ID, a)
			}
		}
		for _, body := range []string{`{"key":"n","add":1.5}`, `{"key":"n","add":"1"}`, `{"key":"n","add":1,"value":"2"}`} {
			if a := setWithKey(t, c, fol, "", body); a.Status != 400 {
				t.Fatalf("%s: %+v", body, a)
			}
		}
		if a := setWithKey(t, c, lead, "", addBody("n", 9223372036854775807)); a.Status != 200 {
			t.Fatalf("add max int64 to -2: %+v", a)
		}
		if a := setWithKey(t, c, lead, "", addBody("n", 9)); a.Status != 400 {
			t.Fatalf("overflow: %+v", a)
		}
		st := c.WaitConverged(10 * time.Second)
		if st["word"] != "abc" || st["n"] != "9223372036854775805" {
			t.Fatalf("refused adds changed the state: %v", st)
		}
	})
}

func TestIdempotencyKeyRetry(t *testing.T) {
	c := testcluster.NewStatic(t, 3)
	lead := c.WaitLeader(10 * time.Second)
	fols := c.Followers()
	first := setWithKey(t, c, fols[0], "retry-1", addBody("ctr", 1))
	if first.Status != 200 || first.Data != valueJSON("ctr", "1") {
		t.Fatalf("first write: %+v", first)
	}
	for _, m := range []*testcluster.Member{fols[0], fols[1], lead} {
		if a := setWithKey(t, c, m, "retry-1", addBody("ctr", 1)); a != first {
			t.Fatalf("retry via member %d: %+v, first was %+v", m.ID, a, first)
		}
	}
	// A retry answered from the table, even with another body.
	if a := setWithKey(t, c, lead, "retry-1", addBody("other", 5)); a != first {
		t.Fatalf("retry with another body: %+v, first was %+v", a, first)
	}
	// A body PreProcessData refuses is not proposed, so not recorded
	// (TestApplyWriteRecordsRefusal covers a refusal by CommitResult).
	c.MustSet(lead, "word", "abc")
	bad := setWithKey(t, c, fols[1], "retry-2", addBody("word", 1))
	if bad.Status != 400 || bad.Code != "bad_request" {
		t.Fatalf("add to a non-integer: %+v", bad)
	}
	if v := converged(c, "ctr"); v != "1" {
		t.Fatalf("counter %q after retries, want 1", v)
	}
	// Without a key, a write is applied each time.
	setWithKey(t, c, lead, "", addBody("ctr", 1))
	if v := converged(c, "ctr"); v != "2" {
		t.Fatalf("counter %q, want 2", v)
	}
	sameTables(t, c)
}

func TestIdempotencyKeyConcurrent(t *testing.T) {
	c := testcluster.NewStatic(t, 3)
	ms := c.Running()
	const n = 20
	answers := make([]answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = setWithKey(t, c, ms[i%len(ms)], "concurrent", addBody("ctr", 1))
		}()
	}
	wg.Wait()
	if answers[0].Status != 200 || answers[0].Data != valueJSON("ctr", "1") {
		t.Fatalf("answer 0: %+v", answers[0])
	}
	for i, a := range answers {
		if a != answers[0] {
			t.Fatalf("answer %d: %+v, answer 0: %+v", i, a, answers[0])
		}
	}
	if v := converged(c, "ctr"); v != "1" {
		t.Fatalf("counter %q, want 1", v)
	}
	sameTables(t, c)
}

func TestIdempotencyKeyAcrossLeaderChangeRestartAndSnapshot(t *testing.T) {
	c := testcluster.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.SnapshotCount = 8
		cfg.CatchUpEntries = 2
	})
	lead := c.WaitLeader(10 * time.Second)
	first := setWithKey(t, c, lead, "k-lead", addBody("ctr", 1))
	if first.Status != 200 || first.Data != valueJSON("ctr", "1") {
		t.Fatalf("first write: %+v", first)
	}
	retry := func(stage string) {
		t.Helper()
		for _, m := range c.Running() {
			if a := setWithKey(t, c, m, "k-lead", addBody("ctr", 1)); a != first {
				t.Fatalf("%s: retry via member %d: %+v, first was %+v", stage, m.ID, a, first)
			}
		}
		if v := converged(c, "ctr"); v != "1" {
			t.Fatalf("%s: counter %q, want 1", stage, v)
		}
		sameTables(t, c)
	}

	t.Run("LeaderTransfer", func(t *testing.T) {
		to := c.Followers()[0]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := lead.Node.TransferLeader(ctx, to.ID); err != nil {
			t.Fatalf("transfer to %d: %v", to.ID, err)
		}
		if got := c.WaitLeader(10 * time.Second); got.ID != to.ID {
			t.Fatalf("leader %d, want %d", got.ID, to.ID)
		}
		retry("after a leader transfer")
	})
	t.Run("RestartAll", func(t *testing.T) {
		for _, m := range c.Members {
			m.Stop()
		}
		for _, m := range c.Members {
			m.Restart()
		}
		c.WaitLeader(10 * time.Second)
		retry("after restarting every member")
	})
	t.Run("Snapshot", func(t *testing.T) {
		// A follower misses enough entries to need a snapshot.
		off := c.Followers()[0]
		off.Stop()
		for i := range 30 {
			c.MustSet(c.WaitLeader(10*time.Second), fmt.Sprintf("fill-%d", i), "x")
		}
		off.Restart()
		retry("after a snapshot install")
		for _, m := range c.Members {
			m.Stop()
		}
		for _, m := range c.Members {
			m.Restart()
		}
		c.WaitLeader(10 * time.Second)
		retry("after restarting from snapshots")
		if got := off.Store.ResetCount(); got == 0 {
			t.Fatalf("member %d never loaded a snapshot", off.ID)
		}
	})
}

func TestIdempotencyKeyBad(t *testing.T) {
	c := testcluster.NewStatic(t, 3)
	fol := c.Followers()[0]
	for name, key := range map[string]string{
		"TooLong":  strings.Repeat("k", embedraft.MaxIdempotencyKeyBytes+1),
		"Space":    "a b",
		"NonASCII": "ключ",
		"Tab":      "a\tb",
	} {
		t.Run(name, func(t *testing.T) {
			if a := setWithKey(t, c, fol, key, addBody("ctr", 1)); a.Status != 400 || a.Code != "bad_request" {
				t.Fatalf("key %q: %+v", key, a)
			}
		})
	}
	t.Run("ControlCharSend", func(t *testing.T) {
		// net/http will not send a control character or DEL in a header:
		// Send checks the same rule (TestCheckIdempotencyKey has them all).
		ctx := embedraft.WithIdempotencyKey(context.Background(), "a\x01b")
		if _, err := fol.Node.Send(ctx, []byte(addBody("ctr", 1))); !errors.Is(err, embedraft.ErrBadRequest) {
			t.Fatalf("Send with a control character in the key: %v", err)
		}
	})
	t.Run("Longest", func(t *testing.T) {
		key := strings.Repeat("~", embedraft.MaxIdempotencyKeyBytes)
		if a := setWithKey(t, c, fol, key, addBody("ok", 1)); a.Status != 200 {
			t.Fatalf("128-byte key: %+v", a)
		}
	})
	if st := c.WaitConverged(10 * time.Second); st["ctr"] != "" {
		t.Fatalf("a refused write was applied: %v", st)
	}
}

func TestIdempotencyKeySend(t *testing.T) {
	c := testcluster.NewStatic(t, 3)
	fol := c.Followers()[0]
	lead := c.WaitLeader(10 * time.Second)
	ctx := embedraft.WithIdempotencyKey(context.Background(), "send-1")
	var firstJSON []byte
	for i, m := range []*testcluster.Member{lead, fol, lead} {
		obj, err := m.Node.Send(ctx, []byte(addBody("ctr", 3)))
		if err != nil {
			t.Fatalf("send %d via member %d: %v", i, m.ID, err)
		}
		b, _ := json.Marshal(obj)
		if i == 0 {
			firstJSON = b
		} else if !bytes.Equal(b, firstJSON) {
			t.Fatalf("send %d: %s, first %s", i, b, firstJSON)
		}
	}
	if string(firstJSON) != valueJSON("ctr", "3") {
		t.Fatalf("answer %s", firstJSON)
	}
	if v := converged(c, "ctr"); v != "3" {
		t.Fatalf("counter %q, want 3", v)
	}
}

func TestIdempotencyKeyWindow(t *testing.T) {
	c := testcluster.NewStatic(t, 3, func(cfg *embedraft.Config) {
		cfg.IdempotencyWindow = 200 * time.Millisecond
		cfg.IdempotencyKeys = 3
	})
	lead := c.WaitLeader(10 * time.Second)
	fol := c.Followers()[0]
	if a := setWithKey(t, c, fol, "w", addBody("ctr", 1)); a.Data != valueJSON("ctr", "1") {
		t.Fatalf("first write: %+v", a)
	}
	// Within the window the retry gets the first answer; once the key is
	// forgotten it is applied again, once.
	testcluster.Eventually(t, 10*time.Second, func() error {
		a := setWithKey(t, c, fol, "w", addBody("ctr", 1))
		switch a.Data {
		case valueJSON("ctr", "1"):
			return errors.New("still remembered")
		case valueJSON("ctr", "2"):
			return nil
		}
		return fmt.Errorf("unexpected answer %+v", a)
	})
	if v := converged(c, "ctr"); v != "2" {
		t.Fatalf("counter %q, want 2", v)
	}
	sameTables(t, c)
	t.Run("Limit", func(t *testing.T) {
		for i := range 4 {
			setWithKey(t, c, lead, fmt.Sprintf("lim-%d", i), addBody("lim", 1))
		}
		// Four keys, limit three: the oldest is forgotten and applies again.
		if a := setWithKey(t, c, lead, "lim-0", addBody("lim", 1)); a.Data != valueJSON("lim", "5") {
			t.Fatalf("retry of a forgotten key: %+v", a)
		}
		sameTables(t, c)
	})
}

func TestIdempotencyKeyStandalone(t *testing.T) {
	c := testcluster.NewSingle(t)
	m := c.Members[0]
	first := setWithKey(t, c, m, "solo", addBody("ctr", 2))
	if first.Status != 200 || first.Data != valueJSON("ctr", "2") {
		t.Fatalf("first: %+v", first)
	}
	if a := setWithKey(t, c, m, "solo", addBody("ctr", 2)); a != first {
		t.Fatalf("retry: %+v, first %+v", a, first)
	}
	if v, _ := m.Store.Get("ctr"); v != "2" {
		t.Fatalf("counter %q, want 2", v)
	}
}

// TestIdempotencyKeyRetryAfterUnknownOutcome gives up on writes almost at
// once (most end ErrUnknownOutcome while they may still commit), retries
// each with its key until it is answered, and checks every increment was
// applied exactly once.
func TestIdempotencyKeyRetryAfterUnknownOutcome(t *testing.T) {
	c := testcluster.NewStatic(t, 3)
	ms := c.Running()
	const writes = 30
	unknown := 0
	seen := map[string]bool{}
	for i := range writes {
		key := fmt.Sprintf("u-%d", i)
		m := ms[i%len(ms)]
		short, cancel := context.WithTimeout(embedraft.WithIdempotencyKey(context.Background(), key), 300*time.Microsecond)
		_, err := m.Node.Send(short, []byte(addBody("ctr", 1)))
		cancel()
		if errors.Is(err, embedraft.ErrUnknownOutcome) {
			unknown++
		}
		ctx, cancel := context.WithTimeout(embedraft.WithIdempotencyKey(context.Background(), key), 10*time.Second)
		obj, err := ms[(i+1)%len(ms)].Node.Send(ctx, []byte(addBody("ctr", 1)))
		cancel()
		if err != nil {
			t.Fatalf("retry of %s: %v", key, err)
		}
		b, _ := json.Marshal(obj)
		if seen[string(b)] {
			t.Fatalf("two keys answered %s", b)
		}
		seen[string(b)] = true
	}
	t.Logf("%d of %d first attempts ended with an unknown outcome", unknown, writes)
	if v := converged(c, "ctr"); v != fmt.Sprint(writes) {
		t.Fatalf("counter %q after %d keyed writes and their retries, want %d", v, writes, writes)
	}
	sameTables(t, c)
}
