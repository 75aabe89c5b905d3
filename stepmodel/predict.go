package stepmodel

import (
	"fmt"
	"math"

	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/train"
)

// Topology is where the ranks run: Hosts hosts of RanksPerHost ranks each,
// ranks numbered host by host (the planner keeps each TP×SP block on one
// host when it fits).
type Topology struct {
	Hosts        int
	RanksPerHost int
}

// Single is one host running all world ranks.
func Single(world int) Topology { return Topology{Hosts: 1, RanksPerHost: world} }

// Breakdown is a predicted training step of one mesh (all times in
// seconds, per step, the same on every rank of a balanced mesh).
type Breakdown struct {
	Mesh    parallel.Mesh
	Compute float64 // kernels: forward, backward, optimizer
	// Exposed communication per dimension: what the step waits for after
	// the overlap the runtime implements.
	TP, SP, EP, DP, Other float64
	Step                  float64 // Compute + every exposed term
	TokensPerSec          float64 // the job's: dp × tokens per replica / Step
	Memory                float64 // bytes per rank (ZeRO-1 sharding applied)
	Fits                  bool    // Memory ≤ the profile's RankMemory
	Threads               int     // kernel threads per rank
	Oversub               float64 // ranks per core on a host (≥ 1 slows compute)
}

// Exposed is the sum of the exposed communication terms.
func (b Breakdown) Exposed() float64 { return b.TP + b.SP + b.EP + b.DP + b.Other }

func (b Breakdown) String() string {
	return fmt.Sprintf("%-22s step %8.2f ms  %10.0f tok/s  compute %8.2f  tp %7.2f  sp %7.2f  ep %7.2f  dp %7.2f  other %6.2f ms  mem %s",
		MeshString(b.Mesh), b.Step*1e3, b.TokensPerSec, b.Compute*1e3, b.TP*1e3, b.SP*1e3, b.EP*1e3, b.DP*1e3, b.Other*1e3, model.FormatBytes(b.Memory))
}

// MeshString writes a mesh as "dp=2 sp=1 tp=2 ep=2".
func MeshString(m parallel.Mesh) string {
	return fmt.Sprintf("dp=%d sp=%d tp=%d ep=%d", m.DP, m.SP, m.TP, m.EP)
}

// Predict is the step-time model (docs/planner.md#model): per-rank kernel
// time from the profile's throughput, each collective's α-β cost on the
// link class its group uses, and the overlap the runtime implements (DP
// buckets during the backward, TokenRing behind the attention kernels, EP
// exchange chunks behind the expert GEMMs).
func Predict(job train.JobConfig, m parallel.Mesh, topo Topology, p *Profile) (Breakdown, error) {
	if err := m.Validate(); err != nil {
		return Breakdown{}, err
	}
	if topo.Hosts < 1 || topo.RanksPerHost < 1 || topo.Hosts*topo.RanksPerHost != m.World() {
		return Breakdown{}, fmt.Errorf("stepmodel: %d hosts × %d ranks do not hold the %d ranks of %s",
			topo.Hosts, topo.RanksPerHost, m.World(), MeshString(m))
	}
	mc := job.Model
	f := func(x int) float64 { return float64(max(x, 1)) }
	tp, sp, ep := f(m.TP), f(m.SP), f(m.EP)
	plane := f(m.DP * m.SP)
	edp := plane / ep
	d, L, V, E := f(mc.DModel), f(mc.Layers), f(mc.Vocab), f(mc.Experts)
	H, K := f(mc.ExpertHidden), f(mc.TopK)
	T := f(job.Data.SeqLen)
	replica := float64(job.MaxBatchTokens())
	n := replica / sp // tokens per rank
	c, hl, vl := d/tp, H/tp, V/tp
	R := n * K // routed rows each rank's experts process (balanced load)

	b := Breakdown{Mesh: m}
	// Threads and sharing of the host's cores.
	b.Threads, b.Oversub = 1, 1
	if !p.AcceleratorMem {
		b.Threads = max(1, p.Cores/topo.RanksPerHost)
		// One rank has a core to itself (what Calibrate's serial step
		// measures); concurrent ranks share what the host gives them.
		avail := float64(p.Cores)
		if p.AvailableCores > 0 {
			avail = p.AvailableCores
		}
		if topo.RanksPerHost > 1 {
			b.Oversub = math.Max(1, float64(topo.RanksPerHost)/avail)
		}
	}
	rate := (1 + float64(b.Threads-1)*p.ParallelEfficiency) / b.Oversub

	gemm := func(mm, nn, kk float64) float64 {
		fl := 2 * mm * nn * kk
		return fl / (p.GemmGFLOPS(fl) * 1e9 * rate)
	}
	// Forward GEMMs; the backward runs two of the same size per GEMM.
	layerDense := gemm(n, 3*c, d) + gemm(n, d, c) + gemm(n, E, d)
	layerExpert := gemm(R, hl, d) + gemm(R, d, hl)
	head := gemm(n, vl, d)
	attnFwd := 4 * n * (T / 2) * c / (p.AttentionGFLOPS * 1e9 * rate)
	mem := model.EstimateMemory(mc, model.Shard{TP: m.TP, EP: m.EP}, n)
	elem := 3 * mem.ActBytes / (p.ElementwiseGBps * 1e9 * rate)
	expertParams := L * 2 * (E / ep) * hl * d
	denseParams := mem.Params - expertParams
	optParams := mem.Params
	if job.DP.Zero1 {
		optParams = denseParams/plane + expertParams/edp
		mem.OptimBytes *= optParams / mem.Params
	}
	opt := optParams*p.OptimizerNs*1e-9/rate + 4*mem.Params/(p.ElementwiseGBps*1e9*rate)
	fwd := L*(layerDense+layerExpert+attnFwd) + head
	bwd := L*(2*(layerDense+layerExpert)+2.5*attnFwd) + 2*head
	s := p.ComputeScale
	b.Compute = s * (fwd + bwd + elem + opt)
	bwdTime := s * (bwd + elem/2)

	// Links: a group of size g whose ranks are stride apart stays on one
	// host when it spans no more than a host's ranks.
	link := func(stride, g float64) Link {
		if topo.Hosts > 1 && stride*g > float64(topo.RanksPerHost) {
			return p.Inter
		}
		return p.Intra
	}
	copyB := p.CopyBeta * b.Oversub
	msg := func(l Link, bytes float64) float64 { return l.Alpha + bytes*(l.Beta+copyB) }
	allReduce := func(l Link, g, bytes float64) float64 {
		switch {
		case g <= 1:
			return 0
		case bytes <= 64<<10: // small: recursive doubling of the whole buffer
			return math.Ceil(math.Log2(g)) * msg(l, bytes)
		}
		return 2 * (g - 1) * msg(l, bytes/g) // ring: reduce-scatter + all-gather
	}
	gather := func(l Link, g, bytes float64) float64 { // all-gather or reduce-scatter of bytes in all
		if g <= 1 {
			return 0
		}
		return (g - 1) * msg(l, bytes/g)
	}
	allToAll := func(l Link, g, bytes float64) float64 { // bytes: what one rank sends in all
		if g <= 1 {
			return 0
		}
		out := bytes * (g - 1) / g
		if l.PerPeer { // every peer on its own link: the sends overlap
			return l.Alpha + out/(g-1)*l.Beta + out*copyB
		}
		return (g-1)*l.Alpha + out*(l.Beta+copyB)
	}

	// Tensor parallelism: blocking all-reduces of [n, d] partial sums, two
	// per layer forward and two backward, one in the head's backward; the
	// cross-entropy statistics' all-gather.
	tpl := link(1, tp)
	b.TP = (4*L+1)*allReduce(tpl, tp, 4*n*d) + gather(tpl, tp, 4*2*n*tp)

	// Expert parallelism: dispatch and combine forward and backward; the
	// chunks pipeline each exchange with the expert GEMMs (ep_chunks = 0
	// lets the runtime choose: the model takes the best count).
	if m.EP > 1 {
		epl := link(tp, ep)
		a2a := allToAll(epl, ep, 4*R*d) + allToAll(epl, ep, 8*ep) // rows, then counts
		expertFwd := s * layerExpert
		best := math.Inf(1)
		counts := []int{1, 2, 4, 8}
		if mc.EPChunks != model.EPChunksAuto {
			counts = []int{max(1, mc.EPChunks)}
		}
		for _, ch := range counts {
			k := float64(ch)
			// fwd: dispatch, GEMMs, combine; bwd the same with twice the GEMMs.
			exposed := 0.0
			for _, g := range []float64{expertFwd, 2 * expertFwd} {
				exposed += 2*a2a/k + math.Max(0, 2*a2a*(k-1)/k-g*(k-1)/k) + 2*(k-1)*epl.Alpha
			}
			best = math.Min(best, exposed)
		}
		b.EP = L * best
	}

	// Sequence parallelism (TokenRing): sp−1 steps per attention, query
	// blocks one way and partial results the other, behind the attention
	// kernels of the steps before.
	if m.SP > 1 {
		spl := link(tp, sp)
		steps := sp - 1
		fwdMsg := msg(spl, 4*n*c)
		bwdMsg := msg(spl, 4*2*n*c)
		attn := s * attnFwd
		fwdExp := math.Max(fwdMsg, steps*fwdMsg-attn*steps/sp)
		bwdExp := math.Max(bwdMsg, steps*bwdMsg-2.5*attn*steps/sp)
		b.SP = L * (fwdExp + bwdExp)
	}

	// Gradient reduction: dense gradients over the DP·SP plane, expert
	// gradients over the expert-data-parallel group, in buckets reduced as
	// the backward makes them final; only the last bucket and what the
	// backward cannot hide are exposed. ZeRO-1 reduce-scatters instead and
	// all-gathers the parameters after the optimizer (exposed).
	planeL, edpL := link(tp, plane), link(tp*ep, edp)
	var red, gatherP float64
	if job.DP.Zero1 {
		red = gather(planeL, plane, 4*denseParams) + gather(edpL, edp, 4*expertParams)
		gatherP = gather(planeL, plane, 4*denseParams) + gather(edpL, edp, 4*expertParams)
	} else {
		red = allReduce(planeL, plane, 4*denseParams) + allReduce(edpL, edp, 4*expertParams)
	}
	if red > 0 {
		total := 4 * mem.Params
		last := math.Min(1, float64(job.DP.BucketFloats())*4/total)
		if !job.DP.Overlap {
			last = 1
		}
		b.DP = math.Max(red*last, red-bwdTime*(1-last)) + gatherP
	}

	// Small plane all-reduces: the target count, the loss statistics, the
	// expert load; the gradient norm over the world on logged steps.
	small := 3*allReduce(link(tp, plane), plane, 16) + allReduce(link(tp, plane), plane, 4*L*(2*E+2))
	if job.Optim.ClipNorm > 0 {
		small += allReduce(link(1, f(m.World())), f(m.World()), 8)
	}
	b.Other = small

	b.Memory = mem.Total()
	b.Fits = b.Memory <= p.RankMemory
	b.Step = b.Compute + b.Exposed()
	b.TokensPerSec = float64(m.DP) * replica / b.Step
	return b, nil
}
