package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/embedraft/embedraft"
)

// The routes' data, as the library defines it: any service built on it
// answers these shapes.
type (
	peerList   = embedraft.PeerList // GET /raft/api/getPeerList
	peerInfo   = embedraft.NodeInfo // one member of it
	nodeStatus = embedraft.Status   // GET /raft/api/status
)

// memberStatus is one row of the status command.
type memberStatus struct {
	ID        uint64 `json:"id"`
	Addr      string `json:"addr"`
	Role      string `json:"role"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	IsLeader  bool   `json:"is_leader"`
	// Lag is the leader's commit index minus this member's applied index;
	// absent when the leader or this member did not answer.
	Lag *uint64 `json:"lag,omitempty"`
	// Status is the member's own answer; absent when unreachable.
	Status *nodeStatus `json:"status,omitempty"`
}

// clusterStatus is the outcome of the status command.
type clusterStatus struct {
	Time      time.Time      `json:"time"`
	Endpoint  string         `json:"endpoint,omitempty"` // the endpoint that listed the members
	ClusterID string         `json:"cluster_id,omitempty"`
	Leader    uint64         `json:"leader"`
	Healthy   bool           `json:"healthy"`
	Problems  []string       `json:"problems,omitempty"`
	Members   []memberStatus `json:"members"`
}

// discover asks every endpoint for the member list at once and keeps the
// first answer, in endpoint order, that knows a leader (else the first
// answer at all).
func (c *client) discover(ctx context.Context) (string, peerList, error) {
	type result struct {
		pl  peerList
		err error
	}
	results := make([]result, len(c.endpoints))
	var wg sync.WaitGroup
	for i, ep := range c.endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i].err = c.call(ctx, "GET", ep+"/raft/api/getPeerList", nil, &results[i].pl)
		}()
	}
	wg.Wait()
	best := -1
	var errs []error
	for i, r := range results {
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case best < 0 || (results[best].pl.Leader == 0 && r.pl.Leader != 0):
			best = i
		}
	}
	if best < 0 {
		return "", peerList{}, fmt.Errorf("no endpoint answered: %w", errors.Join(errs...))
	}
	return c.endpoints[best], results[best].pl, nil
}

// clusterStatus lists the members and queries each one's status at once.
// A negative maxLag does not check lag.
func (c *client) clusterStatus(ctx context.Context, maxLag int64) clusterStatus {
	st := clusterStatus{Time: time.Now().UTC(), Members: []memberStatus{}}
	ep, pl, err := c.discover(ctx)
	if err != nil {
		st.Problems = []string{err.Error()}
		return st
	}
	st.Endpoint = ep
	for _, p := range pl.Peers {
		st.Members = append(st.Members, memberStatus{ID: p.ID, Addr: p.Addr, Role: p.Role})
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].ID < st.Members[j].ID })
	var wg sync.WaitGroup
	for i := range st.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &st.Members[i]
			var ns nodeStatus
			u := m.Addr + "/raft/api/status"
			if err := c.call(ctx, "GET", u, nil, &ns); err != nil {
				m.Error = strings.TrimPrefix(err.Error(), "GET "+u+": ") // the row names the member
				return
			}
			m.Reachable, m.Status = true, &ns
		}()
	}
	wg.Wait()
	st.assess(pl, maxLag)
	return st
}

// assess finds the leader, computes lag and lists what makes the cluster
// unhealthy.
func (st *clusterStatus) assess(pl peerList, maxLag int64) {
	var problems []string
	// The leader is the reachable member that says it leads; with several
	// (a deposed leader that has not heard yet), the highest term wins.
	var leader *memberStatus
	leaders := 0
	for i := range st.Members {
		m := &st.Members[i]
		if !m.Reachable {
			problems = append(problems, fmt.Sprintf("member %d (%s) unreachable: %s", m.ID, m.Addr, m.Error))
			continue
		}
		if m.Status.State == "leader" {
			leaders++
			if leader == nil || m.Status.Term > leader.Status.Term {
				leader = m
			}
		}
	}
	if leaders > 1 {
		problems = append(problems, fmt.Sprintf("%d members say they lead", leaders))
	}
	if leader != nil {
		leader.IsLeader = true
		st.Leader = leader.ID
		st.ClusterID = leader.Status.ClusterID
	} else {
		st.Leader = pl.Leader
		problems = append(problems, "no reachable leader")
	}
	for i := range st.Members {
		m := &st.Members[i]
		if !m.Reachable {
			continue
		}
		s := m.Status
		if st.ClusterID == "" {
			st.ClusterID = s.ClusterID
		}
		switch {
		case s.Mode == "removed":
			problems = append(problems, fmt.Sprintf("member %d is removed", m.ID))
			continue
		case s.ClusterID != st.ClusterID:
			problems = append(problems, fmt.Sprintf("member %d is in cluster %s, not %s", m.ID, s.ClusterID, st.ClusterID))
			continue
		case s.ID != m.ID:
			problems = append(problems, fmt.Sprintf("%s answers as member %d, not %d", m.Addr, s.ID, m.ID))
		case leader != nil && s.Leader != leader.ID:
			problems = append(problems, fmt.Sprintf("member %d sees leader %d", m.ID, s.Leader))
		}
		if leader != nil {
			lag := uint64(0)
			if leader.Status.Commit > s.Applied {
				lag = leader.Status.Commit - s.Applied
			}
			m.Lag = &lag
			if maxLag >= 0 && lag > uint64(maxLag) {
				problems = append(problems, fmt.Sprintf("member %d lags %d entries behind", m.ID, lag))
			}
		}
	}
	st.Problems = problems
	st.Healthy = len(problems) == 0
}

// writeStatus prints st as a table or one line of JSON.
func writeStatus(w io.Writer, output string, st clusterStatus) error {
	if output == "json" {
		return writeJSON(w, st)
	}
	if st.Endpoint == "" { // nothing answered: the problem says why
		_, err := fmt.Fprintf(w, "no member list: %s\n", strings.Join(st.Problems, "; "))
		return err
	}
	leader := "none"
	if st.Leader != 0 {
		leader = strconv.FormatUint(st.Leader, 10)
	}
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(w, "cluster %s  leader %s  members %d  %s\n", orDash(st.ClusterID), leader, len(st.Members), health)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tROLE\tSTATE\tLEADER\tTERM\tCOMMIT\tAPPLIED\tLAG\tREACHABLE")
	for _, m := range st.Members {
		state, lead, term, commit, applied, lag := "-", "", "-", "-", "-", "-"
		if s := m.Status; s != nil {
			state, term = s.State, strconv.FormatUint(s.Term, 10)
			commit, applied = strconv.FormatUint(s.Commit, 10), strconv.FormatUint(s.Applied, 10)
			switch {
			case m.IsLeader:
				lead = "*"
			case s.Leader == 0:
				lead = "none"
			case s.Leader != st.Leader:
				lead = "sees " + strconv.FormatUint(s.Leader, 10)
			}
		}
		if m.Lag != nil {
			lag = strconv.FormatUint(*m.Lag, 10)
		}
		reach := "yes"
		if !m.Reachable {
			reach = "no: " + m.Error
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			m.ID, m.Addr, m.Role, state, lead, term, commit, applied, lag, reach)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// watch prints the status every interval until ctx ends (exit 0) or count
// refreshes were printed (the last one's health decides).
func (c *client) watch(ctx context.Context, w io.Writer, interval time.Duration, count int, maxLag int64) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for n := 1; ; n++ {
		st := c.clusterStatus(ctx, maxLag)
		if ctx.Err() != nil {
			return nil // Ctrl-C: the last refresh was cut short
		}
		if c.output == "json" {
			if err := writeJSON(w, st); err != nil {
				return err
			}
		} else {
			// Home the cursor, clear the screen, redraw.
			fmt.Fprintf(w, "\x1b[H\x1b[2J")
			fmt.Fprintf(w, "embedraftctl watch, every %v, %s (Ctrl-C to stop)\n\n", interval, st.Time.Local().Format(time.TimeOnly))
			if err := writeStatus(w, "table", st); err != nil {
				return err
			}
		}
		if count > 0 && n >= count {
			if !st.Healthy {
				return unhealthyError{st.Problems}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
