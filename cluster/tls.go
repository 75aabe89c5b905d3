package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Mutual TLS on the control plane (docs/control-plane.md#tls): the
// coordinator admits only clients whose certificate the job's CA signed,
// workers and tools accept only a coordinator whose certificate it signed
// for the address they dial. The configs come from package pki; nil means
// cleartext (a cluster that has not set TLS up).

// serverCreds is the coordinator's gRPC transport security for cfg; a
// refused handshake (a client without a certificate of the CA, or not
// speaking TLS) is logged with the client's address.
func serverCreds(cfg *tls.Config, lg zerolog.Logger) credentials.TransportCredentials {
	if cfg == nil {
		lg.Warn().Msg("control plane in cleartext: no TLS configured (--tls-cert, --tls-key, --tls-ca); " +
			"workers are authenticated by the job's control-plane credential only")
		return insecure.NewCredentials()
	}
	return loggedServerCreds{credentials.NewTLS(cfg), lg}
}

type loggedServerCreds struct {
	credentials.TransportCredentials
	log zerolog.Logger
}

func (c loggedServerCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		c.log.Warn().Str("from", raw.RemoteAddr().String()).Err(err).Msg("refused a control-plane connection: TLS handshake failed")
	}
	return conn, info, err
}

func (c loggedServerCreds) Clone() credentials.TransportCredentials {
	return loggedServerCreds{c.TransportCredentials.Clone(), c.log}
}

// TLSRefusal records the first sign that TLS with the coordinator cannot
// work whatever the retries: its certificate does not verify against our
// CA, or it refused ours (a TLS alert). Done is closed when it is set.
type TLSRefusal struct {
	once sync.Once
	done chan struct{}
	err  error
}

func newTLSRefusal() *TLSRefusal { return &TLSRefusal{done: make(chan struct{})} }

func (r *TLSRefusal) set(err error) {
	r.once.Do(func() { r.err = err; close(r.done) })
}

// Done is closed once a refusal is seen.
func (r *TLSRefusal) Done() <-chan struct{} { return r.done }

// Err is the refusal, nil if none was seen.
func (r *TLSRefusal) Err() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// clientCreds is a worker's or tool's gRPC transport security for cfg,
// and the refusal it reports to (nil in cleartext).
func clientCreds(cfg *tls.Config) (credentials.TransportCredentials, *TLSRefusal) {
	if cfg == nil {
		return insecure.NewCredentials(), nil
	}
	r := newTLSRefusal()
	return watchedClientCreds{credentials.NewTLS(cfg), r}, r
}

type watchedClientCreds struct {
	credentials.TransportCredentials
	r *TLSRefusal
}

func (c watchedClientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			c.r.set(fmt.Errorf("the coordinator at %s presented a certificate this worker does not trust (--tls-ca): %w", authority, err))
		}
		return nil, nil, err
	}
	return &alertConn{Conn: conn, r: c.r, addr: authority}, info, nil
}

func (c watchedClientCreds) Clone() credentials.TransportCredentials {
	return watchedClientCreds{c.TransportCredentials.Clone(), c.r}
}

// alertConn reports a TLS alert from the server: under TLS 1.3 a server
// that refuses the client's certificate says so after the client's
// handshake completed, on its first read.
type alertConn struct {
	net.Conn
	r    *TLSRefusal
	addr string
}

func (c *alertConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	var oe *net.OpError
	if err != nil && errors.As(err, &oe) && oe.Op == "remote error" {
		c.r.set(fmt.Errorf("the coordinator at %s refused this worker's certificate (--tls-cert): %w", c.addr, err))
	}
	return n, err
}

// SyscallConn exposes the socket underneath, as gRPC's own TLS conn does.
func (c *alertConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("control-plane connection: no socket underneath")
}
