package spsa_test

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/internal/pretrain"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// A checkpoint of the usual trainer loads into an SPSA replica bit for bit,
// EvalCE agrees with the trainer's evaluation, and a short fine-tuning run
// reports its points and logs every step.
func TestFineTuneFromTrainerCheckpoint(t *testing.T) {
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.SeqLen, cfg.Model.Experts, cfg.Model.ExpertHidden = 32, 1, 32, 4, 32
	cfg.Data.SeqLen, cfg.Data.BatchSize, cfg.Train.Steps = 32, 2, 3
	tr, data := pretrain.Trainer(t, cfg, 3)
	store, err := checkpoint.NewStore(pretrain.Save(t, tr, filepath.Join(t.TempDir(), "ckpt")), 0)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := train.OpenRef(store, "latest")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, err := model.New(cfg.Model, 12345)
	if err != nil {
		t.Fatal(err)
	}
	if err := spsa.LoadWeights(c, m); err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(m.Params, tr.Params(), func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
		t.Fatal("loaded weights differ from the trainer's")
	}
	val, err := data.ValBatches(2)
	if err != nil {
		t.Fatal(err)
	}
	got, err := spsa.EvalCE(m, val)
	if err != nil {
		t.Fatal(err)
	}
	if want, err := tr.Evaluate(val); err != nil || got != want {
		t.Fatalf("EvalCE = %v, trainer's Evaluate = %v (%v)", got, want, err)
	}

	sc := spsa.DefaultConfig()
	w, err := spsa.NewWorker(sc, 1, m.Params, m.Grads, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	log, err := spsa.CreateLog(filepath.Join(t.TempDir(), "spsa.log"), sc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := data.Sampler(0, 1) // the fine-tuning data: the same stream from its start
	if err != nil {
		t.Fatal(err)
	}
	var pts []spsa.Point
	ft := &spsa.FineTune{Model: m, Worker: w, Exchange: spsa.SoloExchange(1), Sampler: s, Val: val, EvalEvery: 2, Log: log,
		OnPoint: func(p spsa.Point) { pts = append(pts, p) }}
	if err := ft.Run(t.Context(), 5); err != nil {
		t.Fatal(err)
	}
	log.Close()
	var evals []int64
	for _, p := range pts {
		if p.ValLoss != 0 {
			evals = append(evals, p.Step)
		}
	}
	if len(pts) != 6 || !slices.Equal(evals, []int64{0, 2, 4, 5}) || pts[5].Payload != 5 {
		t.Fatalf("points %+v: evaluations at %v", pts, evals)
	}
	if _, recs, err := spsa.ReadLog(log.Name()); err != nil || len(recs) != 5 || recs[4].Step != 4 {
		t.Fatalf("log: %d records, %v", len(recs), err)
	}
}
