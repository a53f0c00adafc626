package embedraft

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors. Every error the library returns wraps one of these (or a
// context error), so callers test with errors.Is and the HTTP layer maps them
// to a status in exactly one place, StatusOf.
var (
	// ErrBadRequest is returned by Send and the HTTP routes when a request
	// is malformed: an empty body, invalid JSON, a wrong type, or an error
	// from the service's PreProcessData. Nothing was proposed.
	ErrBadRequest = errors.New("embedraft: bad request")

	// ErrTooLarge is returned when a request body exceeds
	// Config.MaxRequestBytes. Nothing was proposed.
	ErrTooLarge = errors.New("embedraft: request too large")

	// ErrCommit wraps an error returned by the service's Commit for the
	// entry of a write. The entry is committed in the log; the service
	// decided (deterministically, on every node) not to change its state.
	ErrCommit = errors.New("embedraft: commit rejected by service")

	// ErrNoLeader is returned by Send on a node that knows of no leader
	// within the wait bounded by Config.LeaderWait. Nothing was proposed.
	// LinearizableRead returns it when no leader confirmed the read in time.
	ErrNoLeader = errors.New("embedraft: no leader")

	// ErrNotLeader is returned by the peer propose route when this node is
	// not the leader; the forwarding node retries with the new leader.
	// Nothing was proposed.
	ErrNotLeader = errors.New("embedraft: not leader")

	// ErrUnknownOutcome is returned by Send when the write was proposed but
	// its outcome could not be observed before the context ended or the
	// leader changed: it may or may not have been committed.
	ErrUnknownOutcome = errors.New("embedraft: write outcome unknown")

	// ErrBusy is returned (HTTP 503) when a write finds the queue to the
	// leader, or the leader's queue for a forwarding stream, full, or when
	// the service is far behind in applying committed writes (applyqueue.go).
	// Nothing was proposed; retry later.
	ErrBusy = errors.New("embedraft: too many writes in flight")

	// ErrStopped is returned by every method of a node after Close, or of a
	// node that stopped because of a fatal storage error.
	ErrStopped = errors.New("embedraft: node stopped")

	// ErrRemoved is returned on a node that was removed from its cluster.
	ErrRemoved = errors.New("embedraft: node removed from cluster")

	// ErrNotFound is returned for an unknown member id.
	ErrNotFound = errors.New("embedraft: not found")

	// ErrConflict is returned when a membership change is already in
	// flight, or a request contradicts the current membership.
	ErrConflict = errors.New("embedraft: conflict")

	// ErrUnauthorized is returned by peer and admin routes when the cluster
	// token is missing or wrong.
	ErrUnauthorized = errors.New("embedraft: unauthorized")

	// ErrNotCluster is returned by cluster-only operations on a standalone
	// or removed node.
	ErrNotCluster = errors.New("embedraft: not in cluster mode")

	// ErrInvalidConfig is returned by Config.Validate and New.
	ErrInvalidConfig = errors.New("embedraft: invalid config")

	// ErrStorage is returned by New when the data directory cannot be read
	// or holds another node's or another cluster's data, and by a node
	// whose WAL or snapshot write failed (the node stops: continuing could
	// acknowledge writes that are not durable).
	ErrStorage = errors.New("embedraft: storage")
)

// StatusOf maps an error returned by the library to the HTTP status the
// routes answer with. It is the only place that makes that decision.
func StatusOf(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrCommit), errors.Is(err, ErrInvalidConfig):
		return http.StatusBadRequest
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrWrongCluster), errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrUnknownOutcome), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrNotLeader), errors.Is(err, ErrStopped), errors.Is(err, ErrBusy),
		errors.Is(err, ErrRemoved), errors.Is(err, ErrNotCluster), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// codeOf gives the envelope's machine-readable code for an error.
func codeOf(err error) string {
	if err == nil {
		return codeOK
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

const codeOK = "000000"

var errorCodes = []struct {
	err  error
	code string
}{
	{ErrBadRequest, "bad_request"},
	{ErrTooLarge, "too_large"},
	{ErrCommit, "commit_rejected"},
	{ErrNoLeader, "no_leader"},
	{ErrNotLeader, "not_leader"},
	{ErrUnknownOutcome, "unknown_outcome"},
	{ErrBusy, "busy"},
	{ErrStopped, "stopped"},
	{ErrRemoved, "removed"},
	{ErrNotFound, "not_found"},
	{ErrChangeInFlight, "change_in_flight"},
	{ErrMemberDataLost, "data_lost"},
	{ErrConflict, "conflict"},
	{ErrUnauthorized, "unauthorized"},
	{ErrForbidden, "forbidden"},
	{ErrWrongCluster, "wrong_cluster"},
	{ErrNotCluster, "not_cluster"},
	{ErrInvalidConfig, "invalid_config"},
	{ErrStorage, "storage"},
	{context.DeadlineExceeded, "timeout"},
	{context.Canceled, "canceled"},
}

// ErrWrongCluster is returned by peer routes to a request from a node of
// another cluster.
var ErrWrongCluster = errors.New("embedraft: wrong cluster")

// ErrMemberDataLost is returned (HTTP 409) when a member that already had a
// log in its cluster comes back with an empty data directory: by New for a
// static member, by AddMember to a join from the address of such a member,
// and it stops a member that finds out later. Recover by removing the
// member (RemoveMember, POST /raft/api/deleteNode) and joining again with an
// empty data directory: it becomes a new member with a new id.
var ErrMemberDataLost = fmt.Errorf("%w: this member's data was lost", ErrConflict)

// ErrChangeInFlight is returned by AddMember and RemoveMember (HTTP 409)
// while another membership change is being made; retry later.
var ErrChangeInFlight = fmt.Errorf("%w: a membership change is in flight", ErrConflict)
