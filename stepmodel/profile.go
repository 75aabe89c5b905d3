package stepmodel

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"

	"github.com/moetrain/moetrain/internal/atomicfile"
)

// GemmPoint is one measured GEMM throughput: a product of FLOPs floating
// point operations (2·m·n·k) ran at GFLOPS on one kernel thread.
type GemmPoint struct {
	M      int     `json:"m"`
	N      int     `json:"n"`
	K      int     `json:"k"`
	FLOPs  float64 `json:"flops"`
	GFLOPS float64 `json:"gflops"`
}

// Link is the α-β cost of one message on a class of links: Alpha seconds
// per message (software and wire latency) plus Beta seconds per byte.
type Link struct {
	Alpha float64 `json:"alpha_s"`
	Beta  float64 `json:"beta_s_per_byte"`
	// PerPeer says that each pair of ranks has its own link (a shaped full
	// mesh, NVLink switches); otherwise a rank's messages to all its peers
	// share one injection link (a NIC).
	PerPeer bool `json:"per_peer"`
}

// Time is the cost of one message of the given size.
func (l Link) Time(bytes float64) float64 { return l.Alpha + bytes*l.Beta }

// Profile is what the step-time model knows of the hardware: kernel
// throughput per thread, memory traffic, communication per link class, and
// the host's cores and memory (docs/planner.md#profile). Calibrate measures
// one on this machine; a GPU profile is written by hand from a GPU's
// measurements.
type Profile struct {
	Device string `json:"device"` // free text: what was measured
	// Gemm is the GEMM throughput curve of one kernel thread, by size
	// (sorted by FLOPs; interpolated in log FLOPs, clamped at the ends).
	Gemm []GemmPoint `json:"gemm"`
	// ParallelEfficiency is the speed-up of each kernel thread beyond the
	// first, relative to the first (1 = perfect scaling).
	ParallelEfficiency float64 `json:"parallel_efficiency"`
	// AttentionGFLOPS is the fused attention kernel's throughput (forward
	// and backward FLOPs counted as 4·T·T_ctx·dh and 2.5× that) per thread.
	AttentionGFLOPS float64 `json:"attention_gflops"`
	// ElementwiseGBps is the memory traffic of elementwise kernels and the
	// optimizer per thread, in GB/s.
	ElementwiseGBps float64 `json:"elementwise_gbps"`
	// OptimizerNs is AdamW's update time per parameter on one thread, in
	// nanoseconds (it is arithmetic-bound: a square root and a division per
	// element).
	OptimizerNs float64 `json:"optimizer_ns_per_param"`
	// ComputeScale multiplies the kernel-sum compute time: the ratio of a
	// measured training step to the kernel sum for the same step, which
	// covers what no microbenchmark sees (routing, gathers, allocation).
	ComputeScale float64 `json:"compute_scale"`
	// Intra and Inter are the links between ranks on one host and on
	// different hosts.
	Intra Link `json:"intra_host"`
	Inter Link `json:"inter_host"`
	// CopyBeta is the CPU time per byte a rank spends moving a message
	// (in-process copies, socket writes): it adds to the link time and,
	// unlike the wire time, needs a core.
	CopyBeta float64 `json:"copy_beta_s_per_byte"`
	// Cores per host, and the memory one rank may use.
	Cores int `json:"cores"`
	// AvailableCores is how many cores' worth of work ranks computing in
	// lockstep on this host actually got when calibrated: Cores on an idle
	// host, fewer on one shared with other jobs (0: Cores). Two or more ranks beyond it
	// time-slice; one rank alone is taken to have a core.
	AvailableCores float64 `json:"available_cores,omitempty"`
	RankMemory     float64 `json:"rank_memory_bytes"`
	AcceleratorMem bool    `json:"accelerator"` // true: one rank per device, no core sharing
}

// Validate reports every missing or out-of-range field, naming it.
func (p *Profile) Validate() error {
	var errs []error
	bad := func(x float64) bool { return !(x > 0) || math.IsInf(x, 0) }
	if len(p.Gemm) == 0 {
		errs = append(errs, errors.New("gemm: no throughput points"))
	}
	for i, g := range p.Gemm {
		if bad(g.FLOPs) || bad(g.GFLOPS) {
			errs = append(errs, fmt.Errorf("gemm[%d]: flops %v and gflops %v must be positive and finite", i, g.FLOPs, g.GFLOPS))
		}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"attention_gflops", p.AttentionGFLOPS}, {"elementwise_gbps", p.ElementwiseGBps}, {"compute_scale", p.ComputeScale}, {"optimizer_ns_per_param", p.OptimizerNs}, {"rank_memory_bytes", p.RankMemory}} {
		if bad(f.v) {
			errs = append(errs, fmt.Errorf("%s = %v: must be positive and finite", f.name, f.v))
		}
	}
	if !(p.ParallelEfficiency >= 0 && p.ParallelEfficiency <= 1) {
		errs = append(errs, fmt.Errorf("parallel_efficiency = %v: must be in [0, 1]", p.ParallelEfficiency))
	}
	for _, l := range []struct {
		name string
		v    Link
	}{{"intra_host", p.Intra}, {"inter_host", p.Inter}} {
		if !(l.v.Alpha >= 0) || !(l.v.Beta >= 0) || math.IsInf(l.v.Alpha, 0) || math.IsInf(l.v.Beta, 0) {
			errs = append(errs, fmt.Errorf("%s: alpha %v and beta %v must be finite and ≥ 0", l.name, l.v.Alpha, l.v.Beta))
		}
	}
	if !(p.CopyBeta >= 0) || math.IsInf(p.CopyBeta, 0) {
		errs = append(errs, fmt.Errorf("copy_beta_s_per_byte = %v: must be finite and ≥ 0", p.CopyBeta))
	}
	if !(p.AvailableCores >= 0) || p.AvailableCores > float64(p.Cores) {
		errs = append(errs, fmt.Errorf("available_cores = %v: must be in [0, cores = %d] (0: all)", p.AvailableCores, p.Cores))
	}
	if p.Cores < 1 || p.Cores > 1<<20 {
		errs = append(errs, fmt.Errorf("cores = %d: must be in [1, 2^20]", p.Cores))
	}
	return errors.Join(errs...)
}

// GemmGFLOPS is the per-thread throughput of a GEMM of the given FLOPs,
// interpolated in log FLOPs between the measured points.
func (p *Profile) GemmGFLOPS(flops float64) float64 {
	g := p.Gemm
	if flops <= g[0].FLOPs {
		return g[0].GFLOPS
	}
	if flops >= g[len(g)-1].FLOPs {
		return g[len(g)-1].GFLOPS
	}
	i := sort.Search(len(g), func(i int) bool { return g[i].FLOPs >= flops })
	a, b := g[i-1], g[i]
	t := (math.Log(flops) - math.Log(a.FLOPs)) / (math.Log(b.FLOPs) - math.Log(a.FLOPs))
	return a.GFLOPS + t*(b.GFLOPS-a.GFLOPS)
}

// Load reads a profile file and validates it; errors name the file.
func Load(path string) (*Profile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	defer f.Close()
	p, err := Read(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	return p, nil
}

// Read decodes and validates a profile (unknown fields are an error, so a
// misspelt key is not silently ignored).
func Read(r io.Reader) (*Profile, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	sort.Slice(p.Gemm, func(i, j int) bool { return p.Gemm[i].FLOPs < p.Gemm[j].FLOPs })
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Save writes p atomically: a temporary file in the same directory, synced,
// then renamed over path.
func (p *Profile) Save(path string) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("profile: refusing to save: %w", err)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	return nil
}
