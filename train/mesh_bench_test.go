package train

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
)

// BenchmarkMeshLongContextMemory trains one step of the reference model on
// one 4,096-token sequence with SP = 1 and SP = 4 (goroutine ranks, one
// kernel thread each) and reports the live heap per rank afterwards, with
// every rank's model, optimizer, activations and communicators still held:
// what sequence parallelism saves, free of the GC timing that blurs a
// process's peak RSS.
//
//	go test ./train -run '^$' -bench MeshLongContextMemory -benchtime 1x
func BenchmarkMeshLongContextMemory(b *testing.B) {
	cfg := DefaultJobConfig()
	cfg.Model.SeqLen, cfg.Data.SeqLen, cfg.Data.BatchSize = 4096, 4096, 1
	cfg.Train.Threads = 1
	rng := rand.New(rand.NewPCG(1, 2))
	batch := []sampling.Batch{randomBatch(rng, 1, 4096, cfg.Model.Vocab)}
	for _, sp := range []int{1, 4} {
		m := parallel.Mesh{DP: 1, SP: sp, TP: 1, EP: 1}
		b.Run(fmt.Sprintf("sp=%d", sp), func(b *testing.B) {
			var live uint64
			for i := 0; i < b.N; i++ {
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				_, ranks := stepMesh(b, meshConfig(cfg, m), m, batch, nil)
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				live = after.HeapAlloc - before.HeapAlloc
				runtime.KeepAlive(ranks)
			}
			b.ReportMetric(float64(live)/float64(sp)/(1<<20), "MiB/rank")
		})
	}
}
