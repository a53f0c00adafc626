package embedraft_test

// The cluster page in a real browser: headless Chromium loads /raft/ui,
// runs its script against a live 3-node cluster, and the test reads the DOM
// it rendered. Skipped where Chromium is not installed, unless
// EMBEDRAFT_BROWSER_TEST=1 (CI sets it), where that is a failure.
//
// EMBEDRAFT_UI_SCREENSHOT=FILE also saves a phone-sized screenshot of the
// page (390x844) to FILE, for looking at it while working on it.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/embedraft/embedraft"
	tc "github.com/embedraft/embedraft/internal/testcluster"
)

// chromium returns the browser to drive, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("EMBEDRAFT_BROWSER_TEST") == "1" {
		t.Fatal("EMBEDRAFT_BROWSER_TEST=1 but chromium is not installed (apt-get install chromium)")
	}
	t.Skip("chromium not installed; set EMBEDRAFT_BROWSER_TEST=1 to make that a failure")
	return ""
}

// browse runs headless Chromium on url for a few seconds of the page's
// (virtual) time, so its script polls the cluster a few times, and returns
// the DOM it rendered. With extra flags (a screenshot) it returns nothing.
func browse(t *testing.T, browser, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-breakpad", "--disable-dev-shm-usage", "--no-default-browser-check",
		"--user-data-dir=" + t.TempDir(),
		// Virtual time runs the page's 1 s polls without waiting for them,
		// and pauses while a fetch is on the network.
		"--virtual-time-budget=3000",
	}
	if len(extra) == 0 {
		args = append(args, "--dump-dom")
	}
	args = append(append(args, extra...), url)
	cmd := exec.CommandContext(ctx, browser, args...)
	cmd.Dir = t.TempDir()
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, stderr.Bytes())
	}
	t.Logf("chromium %s: %v", url, time.Since(start).Round(time.Millisecond))
	return stdout.String()
}

// pageMember is one member row of the rendered page.
type pageMember struct {
	id                uint64
	leader, reachable bool
}

var (
	rowTag  = regexp.MustCompile(`<tr [^>]*data-id="[^>]*>`)
	attrVal = func(tag, name string) string {
		m := regexp.MustCompile(`\b` + name + `="([^"]*)"`).FindStringSubmatch(tag)
		if m == nil {
			return ""
		}
		return m[1]
	}
)

// renderedMembers parses the member rows out of a rendered page, after
// checking the page says its last fetch succeeded.
func renderedMembers(dom string) ([]pageMember, error) {
	body := regexp.MustCompile(`<body[^>]*>`).FindString(dom)
	if st := attrVal(body, "data-status"); st != "ok" {
		banner := regexp.MustCompile(`(?s)<div id="banner"[^>]*>(.*?)</div>`).FindStringSubmatch(dom)
		return nil, fmt.Errorf("page status %q, banner %q", st, banner)
	}
	var out []pageMember
	for _, tag := range rowTag.FindAllString(dom, -1) {
		id, err := strconv.ParseUint(attrVal(tag, "data-id"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("row %s: %v", tag, err)
		}
		out = append(out, pageMember{id: id, leader: attrVal(tag, "data-leader") == "true",
			reachable: attrVal(tag, "data-reachable") == "true"})
	}
	return out, nil
}

// checkPage checks that the page shows want members, all reachable, with
// leader (and only it) marked as the leader.
func checkPage(dom string, want int, leader uint64) error {
	ms, err := renderedMembers(dom)
	if err != nil {
		return err
	}
	if len(ms) != want {
		return fmt.Errorf("%d member rows, want %d: %+v", len(ms), want, ms)
	}
	for _, m := range ms {
		if !m.reachable {
			return fmt.Errorf("member %d shown unreachable", m.id)
		}
		if m.leader != (m.id == leader) {
			return fmt.Errorf("leader shown %+v, want %d", ms, leader)
		}
	}
	if !strings.Contains(dom, `class="badge leader"`) {
		return fmt.Errorf("no leader badge")
	}
	return nil
}

// TestUIBrowser: the page, opened with the token in its URL, shows the three
// members and the leader, then the new leader after a leadership transfer;
// with a wrong token it shows the error banner.
func TestUIBrowser(t *testing.T) {
	browser := chromium(t)
	c := tc.NewStatic(t, 3, func(cfg *embedraft.Config) { cfg.Token = uiToken })
	lead := c.WaitLeader(10 * time.Second)
	// Served by a follower, so the view is gathered over HTTP from the
	// leader, and it survives the transfer below.
	var via, next *tc.Member
	for _, m := range c.Running() {
		switch {
		case m == lead:
		case via == nil:
			via = m
		default:
			next = m
		}
	}
	page := via.URL + embedraft.UIPath + "?token=" + uiToken

	// browse renders the page at least once, and a cluster as fresh as the
	// test's view of it is usually shown at the first try; retry a few
	// times for the rare poll that raced a change.
	expect := func(what string, check func(dom string) error) {
		t.Helper()
		var err error
		for range 3 {
			if err = check(browse(t, browser, page)); err == nil {
				return
			}
			t.Logf("%s: %v; again", what, err)
		}
		t.Fatalf("%s: %v", what, err)
	}
	expect("before the transfer", func(dom string) error { return checkPage(dom, 3, lead.ID) })
	if shot := os.Getenv("EMBEDRAFT_UI_SCREENSHOT"); shot != "" {
		browse(t, browser, page, "--window-size=390,844", "--hide-scrollbars", "--screenshot="+shot)
	}

	req, err := http.NewRequest(http.MethodPost, lead.URL+"/raft/api/transferLeader",
		strings.NewReader(fmt.Sprintf(`{"to":%d}`, next.ID)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+uiToken)
	resp, err := c.Client.Do(req)
	if err != nil {
		t.Fatalf("transferLeader: %v", err)
	}
	if body := readAll(resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("transferLeader to %d: %d %s", next.ID, resp.StatusCode, body)
	}
	resp.Body.Close()
	if got := c.WaitLeader(10 * time.Second); got != next {
		t.Fatalf("leader is %d after the transfer to %d", got.ID, next.ID)
	}
	expect("after the transfer", func(dom string) error { return checkPage(dom, 3, next.ID) })

	// A wrong token in the fragment (which wins over the query's) gets the
	// page but not the data: the banner says so.
	dom := browse(t, browser, page+"#token=wrong")
	if !strings.Contains(dom, `data-status="error"`) || !strings.Contains(dom, "HTTP 401") {
		t.Fatalf("a wrong token shows no error banner:\n%s", dom)
	}
}
