package sp

import (
	"context"
	"strings"
	"testing"
)

// The report has one table per bandwidth, each with the three schedules,
// and names the shaped link.
func TestWriteBenchReport(t *testing.T) {
	var b strings.Builder
	cfg := BenchConfig{SP: 2, SeqLen: 8, Batch: 1, Heads: 1, HeadDim: 4, Iters: 1}
	if err := WriteBenchReport(context.Background(), &b, cfg, []float64{0, 1e9}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if n := strings.Count(out, "\n## link "); n != 2 {
		t.Errorf("%d tables, want 2:\n%s", n, out)
	}
	for _, want := range []string{"## link unshaped", "## link 1GB/s per direction", "compute-only", "ring ", "tokenring "} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if got := fmtBytes(1500); got != "1.5KB" {
		t.Errorf("fmtBytes(1500) = %q, want 1.5KB", got)
	}
}
