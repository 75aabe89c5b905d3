package worker

import (
	"context"
	"fmt"
	"net"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/train"
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

func (d *tcpDataPlane) Connect(ctx context.Context, rank int, addrs []string, token string, lim DataPlaneLimits) (collective.Transport, error) {
	t, err := collective.DialMesh(ctx, d.ln, collective.TCPConfig{Rank: rank, Addrs: addrs, Token: cluster.DataPlaneKey(token), Congestion: d.congestion,
		MaxPayload: lim.MaxPayload, MaxBuffered: lim.MaxBuffered, Hosts: lim.Hosts, ProgressEngine: collective.TrainingEngine})
	if err != nil {
		return nil, fmt.Errorf("data plane: connect rank %d: %w", rank, err)
	}
	return t, nil
}

func (d *tcpDataPlane) Close() error { return d.ln.Close() }

// DataPlaneLimits bound what one peer can make a rank hold on the data
// plane: collective.TCPConfig's MaxPayload (one frame) and MaxBuffered
// (frames ahead of their receives). Zero takes the collective default.
type DataPlaneLimits struct {
	MaxPayload, MaxBuffered uint64
	// Hosts is the host of every rank (PlanHosts): pairs of ranks on one
	// host move their frames through shared memory
	// (collective.TCPConfig.Hosts, docs/collectives.md#shared-memory).
	// Nil keeps every pair on TCP.
	Hosts []string
}

// PlanHosts is the host of every rank of p, as its worker reported it.
func PlanHosts(p cluster.Plan) []string {
	out := make([]string, len(p.Ranks))
	for i, r := range p.Ranks {
		out[i] = r.Worker.Host
	}
	return out
}

// JobDataPlaneLimits bounds the data plane of job on mesh m, whose
// communicators use cc, by the largest messages its plan sends
// (docs/collectives.md#algorithms, docs/mesh.md), with n the tokens a rank
// holds (train.JobConfig.MaxBatchTokens over mesh.sp):
//
//   - reductions, gathers and barriers: segments of cc.SegmentBytes, or
//     whole buffers of at most cc.SmallBytes or of fewer elements than
//     ranks;
//   - expert parallelism: an all-to-all-v block, at most all of the rank's
//     n·top_k slots for one member (dispatch, combine and their backward),
//     n·top_k·d_model floats;
//   - sequence parallelism: a K,V block or a travelling query chunk
//     [q | do | lse | d], at most 2·n·(d_model + heads) floats;
//   - an abort reason, at most 4 KiB.
//
// MaxPayload is twice the largest, at least 1 MiB, so that a bound a little
// short never fails a healthy job. MaxBuffered: a peer runs at most about a
// step ahead of this rank (every step ends in reductions that need it), so
// what arrives before its receive is at most one step of one peer's
// traffic, bounded by: every parameter twice (the gradient reductions) and
// per layer 4 all-to-all-v blocks, 4·SP sequence blocks and 8
// tensor-parallel sums of n·(d_model + top_k) floats; at least
// 4·MaxPayload. No fixed floor beyond that: what one peer can make a rank
// hold must stay small next to the rank's own memory, which for a small
// model is tens of MiB (docs/control-plane.md#hostile-peers).
func JobDataPlaneLimits(job train.JobConfig, m parallel.Mesh, cc collective.Config) DataPlaneLimits {
	largest, step := planBounds(job, m, cc)
	payload := max(2*largest, 1<<20)
	buffered := max(step, 4*payload)
	return DataPlaneLimits{MaxPayload: uint64(payload), MaxBuffered: uint64(buffered)}
}

// planBounds is the largest message of job's plan on mesh m and one step's
// traffic from one peer, in bytes (see JobDataPlaneLimits).
func planBounds(job train.JobConfig, m parallel.Mesh, cc collective.Config) (largest, step float64) {
	mc := job.Model
	sp := max(m.SP, 1)
	n := float64((job.MaxBatchTokens() + sp - 1) / sp)
	d, k, heads, l := float64(mc.DModel), float64(mc.TopK), float64(mc.Heads), float64(mc.Layers)
	largest = float64(max(cc.MaxSegmentFrame(), 4*m.World(), 4096)) // bytes
	perLayer := 8 * n * (d + k)                                     // floats
	if m.EP > 1 {
		block := n * k * d
		largest = max(largest, 4*block)
		perLayer += 4 * block
	}
	if m.SP > 1 {
		seqBlock := 2 * n * (d + heads)
		largest = max(largest, 4*seqBlock)
		perLayer += 4 * float64(sp) * seqBlock
	}
	params := model.EstimateMemory(mc, model.Whole, 1).Params
	return largest, 4 * (2*params + l*perLayer)
}
