package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// add is POST /raft/api/addNode {"addr":ADDR,"id":N}. Any member forwards
// it to the leader.
func (c *client) add(ctx context.Context, w io.Writer, addr string, id uint64) error {
	addr = strings.TrimSuffix(strings.TrimSpace(addr), "/")
	if !strings.HasPrefix(addr, "http://") && !strings.HasPrefix(addr, "https://") {
		return usagef("ADDR %q must be the new member's http:// or https:// URL", addr)
	}
	req := struct {
		Addr string `json:"addr"`
		ID   uint64 `json:"id,omitempty"`
	}{addr, id}
	var resp struct {
		ID        uint64              `json:"id"`
		ClusterID string              `json:"cluster_id"`
		Peers     map[string]peerInfo `json:"peers"`
	}
	ep, err := c.callAny(ctx, "POST", "/raft/api/addNode", req, &resp)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(w, resp)
	}
	_, err = fmt.Fprintf(w, "added member %d (%s) as a learner\nid          %d\ncluster_id  %s\n"+
		"start it with: -id %d -join %s\n", resp.ID, addr, resp.ID, resp.ClusterID, resp.ID, ep)
	return err
}

// remove is POST /raft/api/deleteNode {"id":ID}. Any member forwards it to
// the leader.
func (c *client) remove(ctx context.Context, w io.Writer, id uint64) error {
	var resp struct {
		Removed uint64 `json:"removed"`
	}
	if _, err := c.callAny(ctx, "POST", "/raft/api/deleteNode", map[string]uint64{"id": id}, &resp); err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(w, resp)
	}
	_, err := fmt.Fprintf(w, "removed member %d\n", id)
	return err
}

// transfer is POST /raft/api/transferLeader {"to":ID}, sent to the leader
// found by status. If leadership moves between the two, it tries again.
func (c *client) transfer(ctx context.Context, w io.Writer, to uint64) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var from uint64
		from, err = c.transferOnce(ctx, to)
		if err == nil {
			if c.output == "json" {
				return writeJSON(w, map[string]uint64{"from": from, "leader": to})
			}
			if from == to {
				_, err = fmt.Fprintf(w, "member %d is already the leader\n", to)
				return err
			}
			_, err = fmt.Fprintf(w, "leadership transferred from member %d to member %d\n", from, to)
			return err
		}
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ctx.Err() != nil {
			return err
		}
		select { // the leader changed under us (503): look again
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
	return err
}

func (c *client) transferOnce(ctx context.Context, to uint64) (uint64, error) {
	st := c.clusterStatus(ctx, -1)
	var leader *memberStatus
	for i := range st.Members {
		if st.Members[i].IsLeader {
			leader = &st.Members[i]
		}
	}
	if leader == nil {
		return 0, fmt.Errorf("no reachable leader to ask: %s", strings.Join(st.Problems, "; "))
	}
	if leader.ID == to {
		return to, nil
	}
	err := c.call(ctx, "POST", leader.Addr+"/raft/api/transferLeader", map[string]uint64{"to": to}, nil)
	return leader.ID, err
}

// backup streams GET /raft/api/backup into file: it writes file.tmp, syncs
// it, renames it to file and syncs the directory, so file is either the
// whole backup or untouched.
func (c *client) backup(ctx context.Context, w io.Writer, file string) (err error) {
	var (
		resp *http.Response
		errs []error
	)
	for _, ep := range c.endpoints {
		resp, err = c.openBackup(ctx, ep+"/raft/api/backup")
		if err != nil && notSent(err) && ctx.Err() == nil {
			errs = append(errs, err)
			continue
		}
		break
	}
	if len(errs) == len(c.endpoints) {
		return fmt.Errorf("no endpoint reachable: %w", errors.Join(errs...))
	}
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return fmt.Errorf("%w (this server has no backup route: it runs a version of embedraft without GET /raft/api/backup)", err)
		}
		return err
	}
	defer resp.Body.Close()

	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, resp.Body)
	if err != nil {
		return fmt.Errorf("download from %s after %d bytes: %w", resp.Request.URL, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("download from %s: got %d of %d bytes", resp.Request.URL, n, resp.ContentLength)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, file); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	if d, derr := os.Open(filepath.Dir(file)); derr == nil { // make the rename durable
		_ = d.Sync()
		d.Close()
	}
	if c.output == "json" {
		return writeJSON(w, map[string]interface{}{"file": file, "bytes": n, "endpoint": resp.Request.URL.String()})
	}
	_, err = fmt.Fprintf(w, "wrote %d bytes to %s\n", n, file)
	return err
}

// openBackup starts the download: -timeout bounds the wait for the answer's
// header, not the transfer of the body. A non-2xx answer is an *apiError.
func (c *client) openBackup(ctx context.Context, u string) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := c.newRequest(ctx, "GET", u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	timer := time.AfterFunc(c.timeout, cancel)
	resp, err := c.hc.Do(req)
	if err != nil || !timer.Stop() {
		cancel()
		if err == nil {
			resp.Body.Close()
			err = context.DeadlineExceeded
		}
		return nil, transportError("GET", u, err)
	}
	if resp.StatusCode/100 != 2 {
		defer cancel()
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		ae := &apiError{Method: "GET", URL: u, Status: resp.StatusCode}
		var env envelope
		if jsonErr := json.Unmarshal(b, &env); jsonErr == nil && env.Error != "" {
			ae.Code, ae.Msg = env.Code, env.Error
		} else {
			ae.Msg = snippet(b)
		}
		return nil, ae
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

// cancelOnClose releases the request's context with its body.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
