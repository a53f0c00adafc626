// Command embedraftctl administers a cluster of any service built on
// embedraft, through the library's HTTP routes.
//
//	embedraftctl -endpoints http://10.0.0.1:8080,http://10.0.0.2:8080 status
//	embedraftctl add http://10.0.0.4:8080
//	embedraftctl remove 4
//	embedraftctl transfer 2
//	embedraftctl backup cluster.backup
//	embedraftctl watch -interval 2s
//
// Exit codes: 0 success; 1 the operation failed (the server answered an
// error, or it could not be reached); 2 the cluster is unhealthy (status,
// watch -count); 3 usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Exit codes.
const (
	exitOK        = 0
	exitFailed    = 1
	exitUnhealthy = 2
	exitUsage     = 3
)

const usageText = `embedraftctl administers a cluster of a service built on embedraft.

Usage:
  embedraftctl [global flags] COMMAND [command flags] [ARGS]

Commands:
  status              members, roles, leader, term, commit, applied, lag
        -max-lag N    also unhealthy when a member's lag exceeds N entries (default: not checked)
  watch               status, redrawn until Ctrl-C
        -interval D   time between refreshes (default 1s)
        -count N      stop after N refreshes (default 0: until Ctrl-C)
  add ADDR            add the member at URL ADDR as a learner (POST /raft/api/addNode)
        -id N         the id it should get (default: the next unused id)
  remove ID           remove member ID (POST /raft/api/deleteNode)
  transfer ID         make member ID the leader (sent to the current leader)
  backup FILE         stream GET /raft/api/backup to FILE (written to FILE.tmp,
                      synced, then renamed)

Global flags (also accepted after the command):
  -endpoints URLS     comma-separated member URLs (env EMBEDRAFT_ENDPOINTS;
                      default http://127.0.0.1:8080)
  -token T            cluster token, sent as "Authorization: Bearer T"
                      (env EMBEDRAFT_TOKEN)
  -cacert FILE        PEM CA bundle to verify the servers' certificates
  -cert FILE          PEM client certificate (mutual TLS), with -key
  -key FILE           PEM private key of -cert
  -insecure-skip-verify  do not verify the servers' certificates
  -timeout D          bound on each request (default 10s; for backup, until
                      the answer starts)
  -o FORMAT           output: table or json (default table)

Exit codes:
  0  success (status: every member reachable and one leader known)
  1  the operation failed: the server answered an error (its message and
     HTTP status are printed) or no endpoint could be reached
  2  the cluster is unhealthy (status, watch -count): a member unreachable,
     removed or in another cluster, no leader or no agreement on it, or a
     lag above -max-lag
  3  usage error

Errors go to stderr.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the global flags.
type options struct {
	endpoints string
	token     secret
	cacert    string
	cert      string
	key       string
	insecure  bool
	timeout   time.Duration
	output    string
}

// secret is a flag value whose default is never printed by -h.
type secret string

func (s *secret) String() string     { return "" }
func (s *secret) Set(v string) error { *s = secret(v); return nil }

// register adds the global flags to fs, with the current values as defaults
// so that flags given before the command keep their values.
func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.endpoints, "endpoints", o.endpoints, "comma-separated member URLs")
	fs.Var(&o.token, "token", "cluster `token`, sent as a bearer token")
	fs.StringVar(&o.cacert, "cacert", o.cacert, "PEM CA bundle")
	fs.StringVar(&o.cert, "cert", o.cert, "PEM client certificate")
	fs.StringVar(&o.key, "key", o.key, "PEM private key of -cert")
	fs.BoolVar(&o.insecure, "insecure-skip-verify", o.insecure, "do not verify server certificates")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "bound on each request")
	fs.StringVar(&o.output, "o", o.output, "output: table or json")
}

// usageError is a bad command line (exit 3).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...interface{}) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// unhealthyError is a status that found the cluster unhealthy (exit 2).
type unhealthyError struct{ problems []string }

func (e unhealthyError) Error() string {
	return "cluster unhealthy: " + strings.Join(e.problems, "; ")
}

// run is the whole command: it parses args, runs one command, and returns
// the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	o := &options{
		endpoints: os.Getenv("EMBEDRAFT_ENDPOINTS"),
		token:     secret(os.Getenv("EMBEDRAFT_TOKEN")),
		timeout:   10 * time.Second,
		output:    "table",
	}
	if o.endpoints == "" {
		o.endpoints = "http://127.0.0.1:8080"
	}
	fs := flag.NewFlagSet("embedraftctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usageText) }
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "embedraftctl: no command")
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	name := fs.Arg(0)
	err := runCommand(ctx, o, name, fs.Args()[1:], stdout, stderr)
	var ue usageError
	var uh unhealthyError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "embedraftctl: %s: %v\n", name, err)
		fmt.Fprintln(stderr, "run 'embedraftctl -h' for usage")
		return exitUsage
	case errors.Is(err, errFlagParse):
		return exitUsage
	case errors.As(err, &uh):
		fmt.Fprintf(stderr, "embedraftctl: %s: %v\n", name, err)
		return exitUnhealthy
	default:
		fmt.Fprintf(stderr, "embedraftctl: %s: %v\n", name, err)
		return exitFailed
	}
}

// errFlagParse is a command's flag error, already reported by the flag
// package.
var errFlagParse = errors.New("bad flags")

// command is one subcommand: its own flags, its positional arguments, and
// what it does.
type command struct {
	args  string // positional arguments, for usage
	nargs int
	flags func(fs *flag.FlagSet)
	run   func(ctx context.Context, c *client, args []string) error
}

func runCommand(ctx context.Context, o *options, name string, args []string, stdout, stderr io.Writer) error {
	var (
		interval = time.Second
		count    int
		maxLag   int64 = -1
		id       uint64
	)
	cmds := map[string]command{
		"status": {
			flags: func(fs *flag.FlagSet) { fs.Int64Var(&maxLag, "max-lag", -1, "unhealthy when a member's lag exceeds N") },
			run: func(ctx context.Context, c *client, _ []string) error {
				st := c.clusterStatus(ctx, maxLag)
				// With no member list, the table would only repeat the error.
				if st.Endpoint != "" || c.output == "json" {
					if err := writeStatus(stdout, c.output, st); err != nil {
						return err
					}
				}
				if !st.Healthy {
					return unhealthyError{st.Problems}
				}
				return nil
			},
		},
		"watch": {
			flags: func(fs *flag.FlagSet) {
				fs.DurationVar(&interval, "interval", time.Second, "time between refreshes")
				fs.IntVar(&count, "count", 0, "stop after N refreshes (0: until Ctrl-C)")
				fs.Int64Var(&maxLag, "max-lag", -1, "unhealthy when a member's lag exceeds N")
			},
			run: func(ctx context.Context, c *client, _ []string) error {
				if interval <= 0 {
					return usagef("-interval must be positive")
				}
				return c.watch(ctx, stdout, interval, count, maxLag)
			},
		},
		"add": {
			args: "ADDR", nargs: 1,
			flags: func(fs *flag.FlagSet) { fs.Uint64Var(&id, "id", 0, "the id the new member should get") },
			run: func(ctx context.Context, c *client, a []string) error {
				return c.add(ctx, stdout, a[0], id)
			},
		},
		"remove": {
			args: "ID", nargs: 1,
			run: func(ctx context.Context, c *client, a []string) error {
				id, err := parseID(a[0])
				if err != nil {
					return err
				}
				return c.remove(ctx, stdout, id)
			},
		},
		"transfer": {
			args: "ID", nargs: 1,
			run: func(ctx context.Context, c *client, a []string) error {
				id, err := parseID(a[0])
				if err != nil {
					return err
				}
				return c.transfer(ctx, stdout, id)
			},
		},
		"backup": {
			args: "FILE", nargs: 1,
			run: func(ctx context.Context, c *client, a []string) error {
				return c.backup(ctx, stdout, a[0])
			},
		},
	}
	cmd, ok := cmds[name]
	if !ok {
		return usagef("unknown command (want status, watch, add, remove, transfer or backup)")
	}
	fs := flag.NewFlagSet("embedraftctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: embedraftctl [global flags] %s [flags] %s\n", name, cmd.args)
		fs.PrintDefaults()
		fmt.Fprintln(stderr, "Global flags and exit codes: embedraftctl -h")
	}
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	o.register(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errFlagParse
	}
	if len(pos) != cmd.nargs {
		if cmd.nargs == 0 {
			return usagef("unexpected arguments %q", pos)
		}
		return usagef("want %s, got %d arguments", cmd.args, len(pos))
	}
	c, err := newClient(o)
	if err != nil {
		return err
	}
	defer c.close()
	return cmd.run(ctx, c, pos)
}

// parseInterleaved parses flags that may come before or after the
// positional arguments ("add ADDR -id 4"), and returns the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, usagef("member id %q is not a positive integer", s)
	}
	return id, nil
}
