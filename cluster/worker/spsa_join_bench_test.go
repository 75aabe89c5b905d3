package worker

import (
	"testing"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// BenchmarkSPSACatchUp is a joiner's catch-up from 1,000 steps of the
// coordinator's log (two workers, one direction each): the read over the
// control plane (loopback) and the replay onto the model, per model size
// (docs/control-plane.md#spsa-join has the figures and the command).
func BenchmarkSPSACatchUp(b *testing.B) {
	const steps = 1000
	for _, sz := range []struct {
		name          string
		dModel, layer int
	}{{"tiny", 16, 2}, {"d128x4", 128, 4}} {
		b.Run(sz.name, func(b *testing.B) {
			job := jobtest.TinyJob()
			job.Model.DModel, job.Model.Layers, job.Model.ExpertHidden = sz.dModel, sz.layer, 2*sz.dModel
			job.Train.Mode, job.Train.Steps = train.ModeSPSA, 2*steps
			m, err := model.New(job.Model, job.Train.Seed)
			if err != nil {
				b.Fatal(err)
			}
			start := append([]float32(nil), m.Params...)
			base := spsa.Checksum(m.Params)
			cl, stop := coordSPSAJobClient(b, b.TempDir(), job)
			defer stop()
			ctl := &spsaControl{client: cl, cred: cluster.ControlCredential("tok"), id: "w0", addr: "bench"}
			if err := ctl.appendAll(b.Context(), base, spsaTestRecords(0, steps)); err != nil {
				b.Fatal(err)
			}
			var got int64
			b.ResetTimer()
			for range b.N {
				copy(m.Params, start)
				w, err := spsa.NewWorker(job.SPSA, 3, m.Params, m.Grads, 0, 1)
				if err != nil {
					b.Fatal(err)
				}
				f, err := ctl.fetch(b.Context(), 0)
				if err != nil || len(f.recs) != steps {
					b.Fatalf("fetch: %d records, %v", len(f.recs), err)
				}
				if err := w.Replay(f.recs, steps); err != nil {
					b.Fatal(err)
				}
				got = f.bytes
			}
			b.ReportMetric(float64(got), "log_bytes")
			b.ReportMetric(float64(len(m.Params)), "params")
		})
	}
}

// BenchmarkSPSAAppend is rank 0's per-step hand-over of one record (two
// workers, one direction) to the coordinator: a loopback gRPC call and the
// coordinator's fsync'd append, what a step waits for.
func BenchmarkSPSAAppend(b *testing.B) {
	job := jobtest.TinyJob()
	job.Train.Mode, job.Train.Steps = train.ModeSPSA, 1<<30
	cl, stop := coordSPSAJobClient(b, b.TempDir(), job)
	defer stop()
	ctl := &spsaControl{client: cl, cred: cluster.ControlCredential("tok"), id: "w0", addr: "bench"}
	recs := spsaTestRecords(0, b.N)
	b.ResetTimer()
	for i := range b.N {
		if _, err := ctl.appendRecs(b.Context(), 1, recs[i]); err != nil {
			b.Fatal(err)
		}
	}
}
