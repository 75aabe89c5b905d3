//go:build !linux

package collective

import (
	"context"
	"errors"
	"net"
	"time"
)

// progressEngine is implemented on Linux only (it drives raw descriptors
// with poll(2) and eventfd); elsewhere TCPConfig.ProgressEngine is refused.
type progressEngine struct{}

func newProgressEngine(*tcpTransport, []*net.TCPConn, time.Duration, bool) (*progressEngine, error) {
	return nil, errors.New("collective: the TCP progress engine needs Linux")
}

func (*progressEngine) send(context.Context, int, Header, [][]byte) error { return ErrClosed }
func (*progressEngine) startSend(int, Header, []byte) Pending             { return failedPending{ErrClosed} }
func (*progressEngine) await(context.Context, *signal) error              { return ErrClosed }
func (*progressEngine) poke()                                             {}
func (*progressEngine) kick()                                             {}
func (*progressEngine) linkDown(int, error)                               {}
func (*progressEngine) close()                                            {}
