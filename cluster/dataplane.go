package cluster

import (
	"context"
	"fmt"
	"net"

	"github.com/moetrain/moetrain/collective"
)

// tcpDataPlane is the collective TCP mesh: a listener bound at start, the
// mesh dialled once the plan gives every rank's address.
type tcpDataPlane struct {
	ln         net.Listener
	congestion string
}

// NewTCPDataPlane binds a data-plane listener on ip (any free port).
func NewTCPDataPlane(ip string) (DataPlane, error) { return NewTCPDataPlaneCongestion(ip, "") }

// NewTCPDataPlaneCongestion is NewTCPDataPlane whose connections, accepted
// and dialled, use the TCP congestion control congestion
// (collective.TCPConfig.Congestion's syntax; "" = its default).
func NewTCPDataPlaneCongestion(ip, congestion string) (DataPlane, error) {
	ln, err := collective.ListenCongestion(net.JoinHostPort(ip, "0"), congestion)
	if err != nil {
		return nil, err
	}
	return &tcpDataPlane{ln: ln, congestion: congestion}, nil
}

func (d *tcpDataPlane) Addr() string { return d.ln.Addr().String() }

func (d *tcpDataPlane) Connect(ctx context.Context, rank int, addrs []string, token string) (collective.Transport, error) {
	t, err := collective.DialMesh(ctx, d.ln, collective.TCPConfig{Rank: rank, Addrs: addrs, Token: token, Congestion: d.congestion})
	if err != nil {
		return nil, fmt.Errorf("data plane: connect rank %d: %w", rank, err)
	}
	return t, nil
}

func (d *tcpDataPlane) Close() error { return d.ln.Close() }
