package cluster

import (
	"context"
	"fmt"
	"net"

	"github.com/moetrain/moetrain/collective"
)

// tcpDataPlane is the collective TCP mesh: a listener bound at start, the
// mesh dialled once the plan gives every rank's address.
type tcpDataPlane struct{ ln net.Listener }

// NewTCPDataPlane binds a data-plane listener on ip (any free port).
func NewTCPDataPlane(ip string) (DataPlane, error) {
	ln, err := collective.Listen(net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, err
	}
	return &tcpDataPlane{ln: ln}, nil
}

func (d *tcpDataPlane) Addr() string { return d.ln.Addr().String() }

func (d *tcpDataPlane) Connect(ctx context.Context, rank int, addrs []string, token string) (collective.Transport, error) {
	t, err := collective.DialMesh(ctx, d.ln, collective.TCPConfig{Rank: rank, Addrs: addrs, Token: token})
	if err != nil {
		return nil, fmt.Errorf("data plane: connect rank %d: %w", rank, err)
	}
	return t, nil
}

func (d *tcpDataPlane) Close() error { return d.ln.Close() }
