package optim

import (
	"fmt"
	"testing"

	"github.com/moetrain/moetrain/tensor"
)

// BenchmarkAdamW updates the reference model's 9,644,288 parameters with 1
// and 2 threads (p, g, m, v read, p, m, v written).
func BenchmarkAdamW(b *testing.B) {
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) { benchAdamW(b, threads) })
	}
}

func benchAdamW(b *testing.B, threads int) {
	prev := tensor.Threads()
	tensor.SetThreads(threads)
	defer tensor.SetThreads(prev)
	const n = 9_644_288
	p, g := make([]float32, n), make([]float32, n)
	for i := range p {
		p[i], g[i] = float32(i%97)*1e-3, float32(i%89)*1e-4
	}
	o, _ := NewAdamW(DefaultConfig(), 0, n)
	b.SetBytes(n * 4 * 7)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := o.Update(p, g, i+1, 1e-3, 1); err != nil {
			b.Fatal(err)
		}
	}
}
