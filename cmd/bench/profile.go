package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// leaderURL asks the first target who leads and where it listens.
func (b *bencher) leaderURL(ctx context.Context) (uint64, string, error) {
	body, err := b.do(ctx, http.MethodGet, b.targets[0].URL+"/raft/api/getPeerList", "")
	if err != nil {
		return 0, "", err
	}
	var env struct {
		Data struct {
			Leader uint64 `json:"leader"`
			Peers  map[string]struct {
				Addr string `json:"addr"`
			} `json:"peers"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		return 0, "", fmt.Errorf("getPeerList: %w", err)
	}
	p, ok := env.Data.Peers[strconv.FormatUint(env.Data.Leader, 10)]
	if env.Data.Leader == 0 || !ok || p.Addr == "" {
		return 0, "", fmt.Errorf("getPeerList: no leader address in %.200s", body)
	}
	return env.Data.Leader, strings.TrimSuffix(p.Addr, "/"), nil
}

// checkPprof fails early when the leader does not serve /debug/pprof/.
func (b *bencher) checkPprof(ctx context.Context) error {
	_, url, err := b.leaderURL(ctx)
	if err != nil {
		return fmt.Errorf("-profile: %w", err)
	}
	if _, err := b.do(ctx, http.MethodGet, url+"/debug/pprof/", ""); err != nil {
		return fmt.Errorf("-profile needs the demo's -pprof flag: %w", err)
	}
	return nil
}

// profiler collects the leader's profiles during one point.
type profiler struct {
	done  chan struct{}
	files []string // set before done is closed
	err   error
}

// startProfiles starts fetching, from the leader, a CPU profile and an
// allocation profile (a delta over the point) that both last the point's
// duration, followed by an in-use heap profile at its end. Files are named
// <workload>-c<c>-node<id>.{cpu,allocs,heap}.pprof in the profile directory.
func (b *bencher) startProfiles(ctx context.Context, workload string, c int) *profiler {
	p := &profiler{done: make(chan struct{})}
	secs := max(1, int(math.Ceil(b.cfg.Duration.Seconds())))
	go func() { // exits once every fetch returned
		defer close(p.done)
		id, url, err := b.leaderURL(ctx)
		if err != nil {
			p.err = fmt.Errorf("profile: %w", err)
			return
		}
		client := &http.Client{Timeout: time.Duration(secs)*time.Second + time.Minute,
			Transport: &http.Transport{TLSClientConfig: b.cfg.TLS}}
		prefix := filepath.Join(b.cfg.ProfileDir, fmt.Sprintf("%s-c%d-node%d", workload, c, id))
		fetch := func(path, file string) error {
			if err := fetchTo(ctx, client, url+path, file); err != nil {
				return err
			}
			p.files = append(p.files, file)
			return nil
		}
		errc := make(chan error, 1)
		go func() { // exits when the CPU profile is written
			errc <- fetchTo(ctx, client, url+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), prefix+".cpu.pprof")
		}()
		aerr := fetch("/debug/pprof/allocs?seconds="+strconv.Itoa(secs), prefix+".allocs.pprof")
		cerr := <-errc
		if cerr == nil {
			p.files = append(p.files, prefix+".cpu.pprof")
		}
		herr := fetch("/debug/pprof/heap", prefix+".heap.pprof")
		for _, err := range []error{cerr, aerr, herr} {
			if err != nil && p.err == nil {
				p.err = fmt.Errorf("profile: %w", err)
			}
		}
	}()
	return p
}

// wait returns the files written, once every fetch has returned.
func (p *profiler) wait() ([]string, error) {
	<-p.done
	return p.files, p.err
}

func fetchTo(ctx context.Context, client *http.Client, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("GET %s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
