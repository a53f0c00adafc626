package main

import (
	"net/http"
	"net/http/pprof"
)

// mountPprof serves net/http/pprof's handlers under /debug/pprof/ on mux
// (the demo's -pprof flag). They are open to anyone who can reach the port:
// use the flag for benchmarks and debugging, not in production.
func mountPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
