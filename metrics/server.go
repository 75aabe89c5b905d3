package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server timeouts: a scrape is a small GET and a response of a few
// kilobytes, so a client slower than these is stuck or hostile.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	// gatherTimeout bounds one scrape's collection.
	gatherTimeout = 10 * time.Second
)

// Server serves the metrics on /metrics over HTTP.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Serve listens on addr (host:port; port 0 picks one) at once, so a busy
// port fails the caller before its job starts, and serves m's registry on
// /metrics until Close.
func Serve(addr string, m *Metrics) (*Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	return Listen(addr, "--metrics-addr", mux)
}

// Handler serves m's registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Timeout: gatherTimeout})
}

// Listen listens on addr at once and serves h until Close, with the
// server's timeouts and header bound. A busy port is an error naming flag,
// the option that gave addr.
func Listen(addr, flag string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("metrics: cannot listen on %s: address already in use (pick another %s)", addr, flag)
		}
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	s := &Server{ln: ln, done: make(chan error, 1), srv: &http.Server{Handler: h,
		ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout, WriteTimeout: writeTimeout, IdleTimeout: idleTimeout,
		MaxHeaderBytes: 16 << 10}}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server: scrapes in progress get until ctx is done to
// finish, then their connections are closed.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("metrics: stop the server on %s: %w", s.Addr(), err)
	}
	return nil
}
