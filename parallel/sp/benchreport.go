package sp

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"time"
)

// WriteBenchReport runs RunBench once per link bandwidth of bandwidths
// (cfg.LinkBandwidth is ignored; 0 = unshaped) and writes `coordinator
// bench attention`'s report to w: the message sizes of each schedule, then
// per bandwidth a table of forward, backward and total medians, the total
// against compute alone and ring's total against each schedule's.
func WriteBenchReport(ctx context.Context, w io.Writer, cfg BenchConfig, bandwidths []float64) error {
	chunk := cfg.SeqLen / (2 * cfg.SP)
	ls := LocalShape{Batch: cfg.Batch, Chunk: chunk, Heads: cfg.Heads, HeadDim: cfg.HeadDim}
	rf, rb := MessageBytes(Ring, ls)
	tf, tb := MessageBytes(TokenRing, ls)
	fmt.Fprintf(w, "# sequence-parallel attention: sp=%d seq=%d (chunk %d) batch=%d heads=%d head-dim=%d, causal, zigzag\n",
		cfg.SP, cfg.SeqLen, chunk, cfg.Batch, cfg.Heads, cfg.HeadDim)
	fmt.Fprintf(w, "# ranks: goroutines in one process, in-process transport, full mesh of shaped links; GOMAXPROCS=%d\n", runtime.GOMAXPROCS(0))
	fmt.Fprintf(w, "# bytes on a rank's busiest link direction per step: ring fwd %s bwd %s; tokenring fwd %s bwd %s (results/dQ return on other links)\n",
		fmtBytes(rf), fmtBytes(rb), fmtBytes(tf), fmtBytes(tb))
	for _, bw := range bandwidths {
		c := cfg
		c.LinkBandwidth = bw
		res, used, err := RunBench(ctx, c)
		if err != nil {
			return err
		}
		link := "unshaped"
		if bw > 0 {
			link = fmt.Sprintf("%s/s per direction, latency %v", fmtBytes(int(bw)), cfg.LinkLatency)
		}
		fmt.Fprintf(w, "\n## link %s; kernel threads %d (shared by %d ranks); medians of %d iterations\n", link, used.Threads, cfg.SP, cfg.Iters)
		fmt.Fprintf(w, "%-13s %10s %10s %10s %10s %10s\n", "schedule", "fwd ms", "bwd ms", "total ms", "×compute", "ring/this")
		var compute, ring time.Duration
		for _, r := range res {
			switch r.Name {
			case "compute-only":
				compute = r.Total
			case "ring":
				ring = r.Total
			}
		}
		for _, r := range res {
			fmt.Fprintf(w, "%-13s %10.2f %10.2f %10.2f %10.3f %10.3f\n", r.Name, ms(r.Forward), ms(r.Backward), ms(r.Total),
				float64(r.Total)/float64(compute), float64(ring)/float64(r.Total))
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// fmtBytes is n with a decimal unit (B, KB, MB, GB) and three digits.
func fmtBytes(n int) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.3gGB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.3gMB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.3gKB", float64(n)/1e3)
	}
	return fmt.Sprintf("%dB", n)
}
