package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// okCode is the envelope code of a successful answer.
const okCode = "000000"

// envelope is every JSON answer of the library's routes.
type envelope struct {
	Code  string          `json:"code"`
	Msg   string          `json:"msg"`
	Data  json.RawMessage `json:"data"`
	Error string          `json:"error"`
}

// apiError is an error answer from a server.
type apiError struct {
	Method string
	URL    string
	Status int
	Code   string
	Msg    string // the envelope's error field, or the start of the body
}

func (e *apiError) Error() string {
	msg := e.Msg
	if msg == "" {
		msg = "(no error message)"
	}
	return fmt.Sprintf("%s %s: HTTP %d %s: %s", e.Method, e.URL, e.Status, http.StatusText(e.Status), msg)
}

// client talks to the cluster's members.
type client struct {
	endpoints []string
	token     string
	timeout   time.Duration
	output    string
	hc        *http.Client
}

func newClient(o *options) (*client, error) {
	if o.output != "table" && o.output != "json" {
		return nil, usagef("-o %q: want table or json", o.output)
	}
	if o.timeout <= 0 {
		return nil, usagef("-timeout must be positive")
	}
	eps, err := parseEndpoints(o.endpoints)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := tlsConfig(o)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	return &client{
		endpoints: eps,
		token:     string(o.token),
		timeout:   o.timeout,
		output:    o.output,
		hc:        &http.Client{Transport: tr},
	}, nil
}

func (c *client) close() { c.hc.CloseIdleConnections() }

// parseEndpoints splits a comma-separated list of URLs; a bare host:port
// means http://host:port.
func parseEndpoints(s string) ([]string, error) {
	var eps []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSuffix(strings.TrimSpace(e), "/")
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "http://" + e
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("-endpoints: %q is not an http(s) URL", e)
		}
		eps = append(eps, e)
	}
	if len(eps) == 0 {
		return nil, usagef("-endpoints: no endpoint given")
	}
	return eps, nil
}

// tlsConfig builds the client's TLS settings from -cacert, -cert, -key and
// -insecure-skip-verify.
func tlsConfig(o *options) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.insecure} //nolint:gosec // opt-in flag
	if (o.cert == "") != (o.key == "") {
		return nil, usagef("-cert and -key go together")
	}
	if o.cacert != "" {
		pem, err := os.ReadFile(o.cacert)
		if err != nil {
			return nil, fmt.Errorf("-cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-cacert %s: no PEM certificate found", o.cacert)
		}
		cfg.RootCAs = pool
	}
	if o.cert != "" {
		cert, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return nil, fmt.Errorf("-cert/-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// newRequest builds a request with the token and, for a body, its JSON.
func (c *client) newRequest(ctx context.Context, method, u string, body interface{}) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// call sends one request bounded by -timeout and decodes the envelope's
// data into out (when not nil). A non-2xx status or a non-OK code is an
// *apiError.
func (c *client) call(ctx context.Context, method, u string, body, out interface{}) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := c.newRequest(ctx, method, u, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return transportError(method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, u, err)
	}
	var env envelope
	jsonErr := json.Unmarshal(b, &env)
	if resp.StatusCode/100 != 2 || jsonErr != nil || env.Code != okCode {
		ae := &apiError{Method: method, URL: u, Status: resp.StatusCode, Code: env.Code, Msg: env.Error}
		if jsonErr != nil || ae.Msg == "" {
			ae.Msg = snippet(b)
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(env.Data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, u, err)
		}
	}
	return nil
}

// transportError shortens a *url.Error: the method and URL are printed once.
func transportError(method, u string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		if method != "GET" {
			return fmt.Errorf("%s %s: no answer within -timeout, the change may still take effect (check with status): %w", method, u, err)
		}
		return fmt.Errorf("%s %s: no answer within -timeout: %w", method, u, err)
	}
	return fmt.Errorf("%s %s: %w", method, u, err)
}

// notSent reports whether err means the request never reached the server,
// so another endpoint may be tried without risking doing the work twice.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// snippet is the start of a non-JSON body, for error messages.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// callAny sends the request to each endpoint in turn until one receives
// it; an endpoint that cannot be connected to is skipped. It returns the
// endpoint that answered.
func (c *client) callAny(ctx context.Context, method, path string, body, out interface{}) (string, error) {
	var errs []error
	for _, ep := range c.endpoints {
		err := c.call(ctx, method, ep+path, body, out)
		if err != nil && notSent(err) && ctx.Err() == nil {
			errs = append(errs, err)
			continue
		}
		return ep, err
	}
	return "", fmt.Errorf("no endpoint reachable: %w", errors.Join(errs...))
}

// writeJSON prints v as one line of JSON.
func writeJSON(w io.Writer, v interface{}) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
