package train

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/optim"
	"github.com/moetrain/moetrain/sampling"
)

// Checkpoint contents written by a Trainer (names from package checkpoint):
//
//   - checkpoint.ModelPrefix+entry for every model.Layout entry, with the
//     entry's global shape: the parameters;
//   - checkpoint.MomentMPrefix+entry and MomentVPrefix+entry: AdamW's first
//     and second moments, same shapes;
//   - blob checkpoint.BlobOptimizer: optimizerState (JSON): step count and the
//     schedule position;
//   - blob checkpoint.BlobSampler: the sampler's sampling.State (JSON), when
//     the caller passes one.
//
// No BlobRNG is written: the trainer holds no random stream. Weights are
// initialised once from train.seed and every sampler choice is derived from
// (seed, position), which sampling.State carries; so step, moments,
// parameters and sampler state are the whole training state.

// LocalPiece maps part of one global tensor onto a rank's local flat buffer.
type LocalPiece struct {
	Name   string            // layout entry name, e.g. "layers.0.w1"
	Shape  []int64           // the tensor's global shape
	Region checkpoint.Region // the part of the tensor held locally
	// Offset is the piece's first element in the local buffer; its
	// Region.Len() elements follow in the region's row-major order.
	Offset int
	// Opt (moment pieces only) indexes the optimizers passed to
	// SnapshotWith / RestoreWith whose M and V hold the piece; Offset is
	// then relative to that optimizer's Lo. 0 with SnapshotLayout /
	// RestoreLayout (the trainer's own optimizer).
	Opt int
}

// ShardLayout says where a rank's local buffers sit in the global tensors.
// A parallel layout (TP/EP boxes, ZeRO-1 flat ranges) builds its own and
// passes it to SnapshotLayout / RestoreLayout. Within one checkpoint every
// rank must describe a given tensor the same way (all boxes or all flat
// ranges): checkpoint.Manifest rejects a mix.
type ShardLayout struct {
	Params  []LocalPiece // pieces of Trainer.Params()
	Moments []LocalPiece // pieces of AdamW.M and AdamW.V (offsets relative to AdamW.Lo)
}

// SerialShardLayout is the layout of a rank holding every parameter (whole
// tensors) and the AdamW moments of the flat range [lo, hi) of layout l,
// stored as flat ranges of each entry it intersects (the ZeRO-1 form, which
// serial training is the one-rank case of).
func SerialShardLayout(l model.Layout, lo, hi int) ShardLayout {
	var sl ShardLayout
	for _, e := range l.Entries {
		shape := int64Shape(e.Shape)
		sl.Params = append(sl.Params, LocalPiece{Name: e.Name, Shape: shape, Region: checkpoint.Whole(shape), Offset: e.Offset})
		a, b := max(lo, e.Offset), min(hi, e.Offset+e.Size())
		if a < b {
			sl.Moments = append(sl.Moments, LocalPiece{Name: e.Name, Shape: shape,
				Region: checkpoint.FlatRange(int64(a-e.Offset), int64(b-a)), Offset: a - lo})
		}
	}
	return sl
}

// RangeShardLayout is the layout of a data-parallel rank that writes only
// the flat ranges ranges[i] = [lo, hi) of the layout's flat buffer:
// parameters and moments as flat ranges of each entry they intersect, the
// moments of ranges[i] held by optimizer i (opts[i].Lo == lo: a ZeRO-1
// shard) when sharded, else by one optimizer over the whole buffer
// (Opt 0, Lo 0). Disjoint ranges over the replicas split the checkpoint's
// bytes between them.
func RangeShardLayout(l model.Layout, ranges [][2]int, sharded bool) ShardLayout {
	var sl ShardLayout
	for i, r := range ranges {
		lo, hi := r[0], r[1]
		for _, e := range l.Entries {
			a, b := max(lo, e.Offset), min(hi, e.Offset+e.Size())
			if a >= b {
				continue
			}
			shape := int64Shape(e.Shape)
			reg := checkpoint.FlatRange(int64(a-e.Offset), int64(b-a))
			sl.Params = append(sl.Params, LocalPiece{Name: e.Name, Shape: shape, Region: reg, Offset: a})
			mp := LocalPiece{Name: e.Name, Shape: shape, Region: reg, Offset: a}
			if sharded {
				mp.Opt, mp.Offset = i, a-lo
			}
			sl.Moments = append(sl.Moments, mp)
		}
	}
	return sl
}

// ShardLayout is this trainer's layout: SerialShardLayout over its optimizer
// range.
func (t *Trainer) ShardLayout() ShardLayout {
	return SerialShardLayout(t.m.Layout, t.opt.Lo, t.opt.Hi)
}

func int64Shape(s []int) []int64 {
	out := make([]int64, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}

// optimizerState is the BlobOptimizer document.
type optimizerState struct {
	Step int `json:"step"` // optimizer steps taken
	// NextLR is the learning rate the next step uses; on restore a different
	// value means the schedule changed (train.steps, optim.*), so the resumed
	// run cannot match an uninterrupted one.
	NextLR float64 `json:"next_lr"`
	// Lo and Hi are the optimizer range of the rank that wrote the blob.
	Lo int `json:"lo"`
	Hi int `json:"hi"`
}

// checkPieces checks that every piece fits a local buffer of n elements.
func checkPieces(kind string, pieces []LocalPiece, n int) error {
	return checkPiecesIn(kind, pieces, func(int) int { return n })
}

// checkPiecesIn checks that every piece fits the buffer of size(piece.Opt)
// elements (-1: no such buffer).
func checkPiecesIn(kind string, pieces []LocalPiece, size func(opt int) int) error {
	for _, p := range pieces {
		if err := p.Region.Validate(p.Shape); err != nil {
			return fmt.Errorf("%s piece %q: region %v of shape %v: %w", kind, p.Name, p.Region, p.Shape, err)
		}
		n := size(p.Opt)
		if n < 0 {
			return fmt.Errorf("%s piece %q: optimizer %d does not exist", kind, p.Name, p.Opt)
		}
		if p.Offset < 0 || int64(p.Offset)+p.Region.Len() > int64(n) {
			return fmt.Errorf("%s piece %q: elements [%d, %d) outside the local buffer of %d", kind, p.Name, p.Offset, int64(p.Offset)+p.Region.Len(), n)
		}
	}
	return nil
}

// Snapshot copies this rank's state (the trainer's own ShardLayout) into a
// checkpoint snapshot of step Step(); sampler, if not nil, is stored as the
// sampler blob. The trainer may step again as soon as it returns.
func (t *Trainer) Snapshot(rank int, sampler *sampling.State) (*checkpoint.Snapshot, error) {
	return t.SnapshotLayout(rank, t.ShardLayout(), sampler)
}

// SnapshotLayout is Snapshot with an explicit layout of the local buffers.
func (t *Trainer) SnapshotLayout(rank int, sl ShardLayout, sampler *sampling.State) (*checkpoint.Snapshot, error) {
	return t.SnapshotWith(rank, sl, nil, sampler)
}

// optSizes returns the moment buffer size of optimizer i of opts (-1 if
// none).
func optSizes(opts []*optim.AdamW) func(int) int {
	return func(i int) int {
		if i < 0 || i >= len(opts) {
			return -1
		}
		return len(opts[i].M)
	}
}

// hostPieces brings the host buffers up to date with the device's
// (syncFromDevice), then checks that sl's parameter pieces fit the
// parameter buffer and its moment pieces fit opts' moment buffers.
func (t *Trainer) hostPieces(sl ShardLayout, opts []*optim.AdamW) error {
	if err := t.syncFromDevice(); err != nil {
		return err
	}
	if err := checkPieces("parameter", sl.Params, len(t.m.Params)); err != nil {
		return err
	}
	return checkPiecesIn("moment", sl.Moments, optSizes(opts))
}

// SnapshotWith is SnapshotLayout with the moments taken from opts
// (sl.Moments[i].Opt indexes it), e.g. a rank's ZeRO-1 shard optimizers;
// nil opts means the trainer's own optimizer.
func (t *Trainer) SnapshotWith(rank int, sl ShardLayout, opts []*optim.AdamW, sampler *sampling.State) (*checkpoint.Snapshot, error) {
	if rank < 0 {
		return nil, fmt.Errorf("checkpoint snapshot: rank %d is negative", rank)
	}
	if opts == nil {
		opts = []*optim.AdamW{t.opt}
	}
	if err := t.hostPieces(sl, opts); err != nil {
		return nil, fmt.Errorf("checkpoint snapshot: %w", err)
	}
	snap := &checkpoint.Snapshot{Step: int64(t.step), Rank: rank}
	for _, p := range sl.Params {
		snap.AddTensor(checkpoint.ModelPrefix+p.Name, p.Shape, p.Region, t.m.Params[p.Offset:p.Offset+int(p.Region.Len())])
	}
	for _, p := range sl.Moments {
		end, o := p.Offset+int(p.Region.Len()), opts[p.Opt]
		snap.AddTensor(checkpoint.MomentMPrefix+p.Name, p.Shape, p.Region, o.M[p.Offset:end])
		snap.AddTensor(checkpoint.MomentVPrefix+p.Name, p.Shape, p.Region, o.V[p.Offset:end])
	}
	ob, err := json.Marshal(optimizerState{Step: t.step, NextLR: t.sched.LR(t.step), Lo: t.opt.Lo, Hi: t.opt.Hi})
	if err != nil {
		return nil, fmt.Errorf("checkpoint snapshot: optimizer state: %w", err)
	}
	snap.AddBlob(checkpoint.BlobOptimizer, ob)
	if bias := t.m.Balance.Flat; len(bias) > 0 {
		// The aux-loss-free routing biases: float32 little-endian, [layers·experts].
		snap.AddBlob(blobRouterBias, float32Bytes(bias))
	}
	if sampler != nil {
		sb, err := json.Marshal(sampler)
		if err != nil {
			return nil, fmt.Errorf("checkpoint snapshot: sampler state: %w", err)
		}
		snap.AddBlob(checkpoint.BlobSampler, sb)
	}
	return snap, nil
}

// CheckModelShapes reports whether checkpoint c holds exactly the model
// tensors of layout l with l's shapes (and, unless weightsOnly, both AdamW
// moments of each). The error names the first offending tensor with both
// shapes and counts the others.
func CheckModelShapes(c *checkpoint.Checkpoint, l model.Layout, weightsOnly bool) error {
	var errs []string
	prefixes := []string{checkpoint.ModelPrefix}
	if !weightsOnly {
		prefixes = append(prefixes, checkpoint.MomentMPrefix, checkpoint.MomentVPrefix)
	}
	for _, e := range l.Entries {
		want := int64Shape(e.GlobalShape()) // a sharded layout checks the global tensors
		for _, pre := range prefixes {
			got, ok := c.Shape(pre + e.Name)
			switch {
			case !ok:
				errs = append(errs, fmt.Sprintf("tensor %s is missing (config shape %v)", pre+e.Name, want))
			case !slices.Equal(got, want):
				errs = append(errs, fmt.Sprintf("tensor %s: checkpoint shape %v, config shape %v", pre+e.Name, got, want))
			}
		}
	}
	for _, name := range c.TensorNames() {
		if rest, ok := strings.CutPrefix(name, checkpoint.ModelPrefix); ok {
			if _, known := l.Lookup(rest); !known {
				shape, _ := c.Shape(name)
				errs = append(errs, fmt.Sprintf("tensor %s %v is not in the configured model", name, shape))
			}
		}
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("checkpoint %s does not fit the model config: %s", c.Dir, errs[0])
	default:
		return fmt.Errorf("checkpoint %s does not fit the model config: %s (and %d more mismatches)", c.Dir, errs[0], len(errs)-1)
	}
}

// blobRank is the rank whose blobs a restoring rank reads: its own if the
// checkpoint has it, else the lowest (step and sampler state are the same on
// every rank, so a restore under another world size may read any).
func blobRank(c *checkpoint.Checkpoint, rank int) int {
	ranks := c.Ranks()
	for _, r := range ranks {
		if r == rank {
			return r
		}
	}
	return ranks[0]
}

// RestoreFrom loads c into the trainer (its own ShardLayout; rank picks the
// blobs) and returns the stored sampler state (nil if none was saved).
func (t *Trainer) RestoreFrom(c *checkpoint.Checkpoint, rank int) (*sampling.State, error) {
	return t.RestoreLayout(c, rank, t.ShardLayout())
}

// RestoreLayout loads the regions sl names from c, whatever layout wrote
// them, after checking that c's tensors have the configured model's shapes.
// Parameters, moments and step change only if everything was read.
func (t *Trainer) RestoreLayout(c *checkpoint.Checkpoint, rank int, sl ShardLayout) (*sampling.State, error) {
	return t.RestoreWith(c, rank, sl, nil)
}

// RestoreWith is RestoreLayout with the moments going to opts
// (sl.Moments[i].Opt indexes it); nil opts means the trainer's own
// optimizer.
func (t *Trainer) RestoreWith(c *checkpoint.Checkpoint, rank int, sl ShardLayout, opts []*optim.AdamW) (*sampling.State, error) {
	if opts == nil {
		opts = []*optim.AdamW{t.opt}
	}
	if err := CheckModelShapes(c, t.m.Layout, false); err != nil {
		return nil, err
	}
	// Regions the checkpoint leaves out keep their current values, which on
	// the GPU are the device's.
	if err := t.hostPieces(sl, opts); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	br := blobRank(c, rank)
	ob, err := c.Blob(br, checkpoint.BlobOptimizer)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	var ost optimizerState
	if err := json.Unmarshal(ob, &ost); err != nil {
		return nil, fmt.Errorf("restore: checkpoint %s: blob %q of rank %d: %w", c.Dir, checkpoint.BlobOptimizer, br, err)
	}
	if int64(ost.Step) != c.Step() || ost.Step < 0 {
		return nil, fmt.Errorf("restore: checkpoint %s: optimizer blob says step %d, manifest step %d", c.Dir, ost.Step, c.Step())
	}
	// A checkpoint written without a sampler has none to restore; one whose
	// sampler blob is listed but unreadable is an error, not a fresh start.
	var sampler *sampling.State
	if c.HasBlob(br, checkpoint.BlobSampler) {
		st, err := SamplerState(c, br)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		sampler = &st
	}
	var bias []float32
	if len(t.m.Balance.Flat) > 0 {
		bb, err := c.Blob(br, blobRouterBias)
		if err != nil {
			return nil, fmt.Errorf("restore: router biases (model.bias_update_rate > 0): %w", err)
		}
		if len(bb) != 4*len(t.m.Balance.Flat) {
			return nil, fmt.Errorf("restore: checkpoint %s: blob %q of rank %d holds %d bytes, want %d (layers·experts float32)", c.Dir, blobRouterBias, br, len(bb), 4*len(t.m.Balance.Flat))
		}
		bias = make([]float32, len(t.m.Balance.Flat))
		for i := range bias {
			bias[i] = math.Float32frombits(binary.LittleEndian.Uint32(bb[4*i:]))
		}
	}
	params := make([]float32, len(t.m.Params))
	copy(params, t.m.Params) // regions sl leaves out keep their values
	m, v := make([][]float32, len(opts)), make([][]float32, len(opts))
	for i, o := range opts {
		m[i], v[i] = append([]float32(nil), o.M...), append([]float32(nil), o.V...)
	}
	for _, p := range sl.Params {
		if err := c.ReadRegion(checkpoint.ModelPrefix+p.Name, p.Region, params[p.Offset:p.Offset+int(p.Region.Len())]); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	for _, p := range sl.Moments {
		end := p.Offset + int(p.Region.Len())
		if err := c.ReadRegion(checkpoint.MomentMPrefix+p.Name, p.Region, m[p.Opt][p.Offset:end]); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if err := c.ReadRegion(checkpoint.MomentVPrefix+p.Name, p.Region, v[p.Opt][p.Offset:end]); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	if bias != nil {
		if err := t.m.Balance.SetFlat(bias); err != nil {
			return nil, fmt.Errorf("restore: checkpoint %s: %w", c.Dir, err)
		}
	}
	copy(t.m.Params, params)
	for i, o := range opts {
		copy(o.M, m[i])
		copy(o.V, v[i])
	}
	t.step = ost.Step
	if err := t.syncToDevice(); err != nil {
		return nil, err
	}
	if lr := t.sched.LR(t.step); lr != ost.NextLR {
		t.log.Warn().Float64("saved_next_lr", ost.NextLR).Float64("next_lr", lr).Int("step", t.step).
			Msg("learning-rate schedule differs from the checkpointed run (train.steps or optim settings changed): the resumed run will not match an uninterrupted one")
	}
	return sampler, nil
}

// JobManifest is the manifest of step made of shards, recording the job
// config and the mesh that wrote it.
func JobManifest(cfg JobConfig, step int64, shards []checkpoint.ShardInfo, mesh map[string]int) (*checkpoint.Manifest, error) {
	cj, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("checkpoint manifest: config: %w", err)
	}
	m := checkpoint.NewManifest(step, shards)
	m.Config = cj
	m.Mesh = mesh
	m.Meta = map[string]string{"created": time.Now().UTC().Format(time.RFC3339)}
	return m, nil
}

var serialMesh = map[string]int{"dp": 1, "tp": 1, "ep": 1, "sp": 1}

// SaveCheckpoint writes the trainer's state at Step() as the single shard
// (rank 0) of a checkpoint in store and commits it, synchronously.
func (t *Trainer) SaveCheckpoint(ctx context.Context, store *checkpoint.Store, sampler *sampling.State, opts checkpoint.WriterOptions) (*checkpoint.Manifest, error) {
	snap, err := t.Snapshot(0, sampler)
	if err != nil {
		return nil, err
	}
	return commitSnapshot(ctx, store, t.cfg, snap, opts)
}

func commitSnapshot(ctx context.Context, store *checkpoint.Store, cfg JobConfig, snap *checkpoint.Snapshot, opts checkpoint.WriterOptions) (*checkpoint.Manifest, error) {
	info, err := snap.WriteShard(ctx, store, opts)
	if err != nil {
		return nil, fmt.Errorf("checkpoint step %d: %w", snap.Step, err)
	}
	m, err := JobManifest(cfg, snap.Step, []checkpoint.ShardInfo{info}, serialMesh)
	if err != nil {
		return nil, err
	}
	if err := store.Commit(m); err != nil {
		return nil, err
	}
	return m, nil
}

// Checkpointer saves a single-rank trainer asynchronously: Save snapshots
// the state (the only part the training step waits for) and writes and
// commits it in the background; a Save waits for the previous one first.
// Methods are safe for concurrent use.
type Checkpointer struct {
	store *checkpoint.Store
	opts  checkpoint.WriterOptions
	log   zerolog.Logger

	run checkpoint.Background[struct{}] // the save being written and committed
}

// NewCheckpointer returns an asynchronous saver into store.
func NewCheckpointer(store *checkpoint.Store, opts checkpoint.WriterOptions, log zerolog.Logger) *Checkpointer {
	checkpoint.Prewarm(1)
	return &Checkpointer{store: store, opts: opts, log: log}
}

// Save waits (bounded by ctx) for the previous save and returns its error if
// it failed (then nothing new starts); otherwise it snapshots t at Step()
// with sampler and starts writing and committing it under ctx.
func (c *Checkpointer) Save(ctx context.Context, t *Trainer, sampler *sampling.State) error {
	if err := c.Wait(ctx); err != nil {
		return err
	}
	snap, err := t.Snapshot(0, sampler)
	if err != nil {
		return err
	}
	cfg := t.cfg
	err = c.run.Start(ctx, func(ctx context.Context) (struct{}, error) {
		start := time.Now()
		m, err := commitSnapshot(ctx, c.store, cfg, snap, c.opts)
		if err == nil {
			c.log.Info().Int64("step", m.Step).Str("dir", c.store.StepDir(m.Step)).
				Dur("took", time.Since(start)).Msg("checkpoint committed")
		}
		return struct{}{}, err
	})
	if err != nil {
		return fmt.Errorf("checkpoint step %d: %w", snap.Step, err)
	}
	return nil
}

// Wait blocks until no save is in flight (or ctx ends) and returns the
// failure of the last save, once.
func (c *Checkpointer) Wait(ctx context.Context) error {
	_, err := c.run.Wait(ctx, "checkpoint save")
	return err
}

// OpenRef opens the checkpoint ref names, fully verified (every checksum):
//
//   - "latest" or "": the newest intact checkpoint of store, falling back
//     past damaged ones (the report says which and why);
//   - a step number: that step of store;
//   - a step directory (holding manifest.json);
//   - a store directory: its latest; "DIR:latest" and "DIR:STEP" likewise.
//
// store may be nil when ref is a path.
func OpenRef(store *checkpoint.Store, ref string) (*checkpoint.Checkpoint, *checkpoint.OpenReport, error) {
	full := checkpoint.OpenOptions{Verify: checkpoint.VerifyFull}
	if ref == "" || ref == "latest" || isStep(ref) {
		if store == nil {
			return nil, nil, fmt.Errorf("checkpoint %q: no checkpoint directory given to resolve it in", ref)
		}
		return store.Open(ref, full)
	}
	path, sel := ref, "latest"
	if _, err := os.Stat(ref); err != nil {
		i := strings.LastIndexByte(ref, ':')
		if i < 0 {
			return nil, nil, fmt.Errorf("checkpoint %s: %w", ref, err)
		}
		path, sel = ref[:i], ref[i+1:]
		if sel != "latest" && !isStep(sel) {
			return nil, nil, fmt.Errorf("checkpoint %q: %q after ':' is neither \"latest\" nor a step number", ref, sel)
		}
	} else if _, err := os.Stat(filepath.Join(ref, checkpoint.ManifestFile)); err == nil {
		c, err := checkpoint.OpenDir(ref, full)
		if err != nil {
			return nil, nil, err
		}
		return c, &checkpoint.OpenReport{Dir: c.Dir, Step: c.Step(), Latest: -1}, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint %s: %w", ref, err)
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("checkpoint %s: not a directory (want a step directory or a checkpoint directory)", path)
	}
	s, err := checkpoint.NewStore(path, 0)
	if err != nil {
		return nil, nil, err
	}
	return s.Open(sel, full)
}

func isStep(s string) bool {
	n, err := strconv.ParseInt(s, 10, 64)
	return err == nil && n >= 0
}

// Resumed describes a restored checkpoint.
type Resumed struct {
	Dir     string
	Step    int64
	Sampler *sampling.State // nil if the checkpoint holds no sampler state
	// Report says which checkpoint "latest" resolved to and which newer,
	// damaged ones it skipped.
	Report *checkpoint.OpenReport
}

// ResumeCheckpoint opens ref (see OpenRef) and restores it into t as rank.
// A fallback past damaged checkpoints is logged as a warning and reported.
// The caller restores the sampler from Resumed.Sampler.
func (t *Trainer) ResumeCheckpoint(store *checkpoint.Store, ref string, rank int) (Resumed, error) {
	c, rep, err := OpenRef(store, ref)
	if err != nil {
		return Resumed{Report: rep}, fmt.Errorf("resume %q: %w", ref, err)
	}
	defer c.Close()
	if len(rep.Skipped) > 0 {
		t.log.Warn().Str("resumed_from", c.Dir).Int64("step", c.Step()).Str("report", rep.String()).
			Msg("newest checkpoint is damaged: resuming from the newest intact one")
	}
	ss, err := t.RestoreFrom(c, rank)
	if err != nil {
		return Resumed{Report: rep}, fmt.Errorf("resume %q: %w", ref, err)
	}
	t.log.Info().Str("dir", c.Dir).Int64("step", c.Step()).Msg("resumed from checkpoint")
	return Resumed{Dir: c.Dir, Step: c.Step(), Sampler: ss, Report: rep}, nil
}

// errNoSampler is returned by RestoreSampler for a checkpoint without one.
var errNoSampler = errors.New("checkpoint holds no sampler state")

// RestoreSampler applies a resumed sampler state to s.
func (r Resumed) RestoreSampler(s sampling.Sampler) error {
	if r.Sampler == nil {
		return fmt.Errorf("resume %s: %w", r.Dir, errNoSampler)
	}
	if err := s.Restore(*r.Sampler); err != nil {
		return fmt.Errorf("resume %s: sampler: %w", r.Dir, err)
	}
	return nil
}

// CheckpointOptions configure checkpointing of the standalone loop.
type CheckpointOptions struct {
	// Dir is the checkpoint directory; "" disables saving.
	Dir string
	// Every saves after every Every steps and after the last step; 0 saves
	// after the last step only.
	Every int
	// Keep is how many committed checkpoints to keep (the newest); 0 keeps
	// all.
	Keep int
	// Resume, if set, is restored before training: "latest", a step number
	// (both in Dir) or a path (see OpenRef).
	Resume string
	// Writer tunes the shard writer.
	Writer checkpoint.WriterOptions
}

// runCheckpoints is the standalone loop's checkpointing: resume at start,
// asynchronous saves after steps, a final wait.
type runCheckpoints struct {
	opts  CheckpointOptions
	store *checkpoint.Store
	cp    *Checkpointer
}

// startCheckpoints validates o, opens the store (removing leftovers of
// interrupted saves) and, if o.Resume is set, restores tr and sampler.
// It returns nil when o asks for nothing.
func startCheckpoints(o CheckpointOptions, tr *Trainer, sampler sampling.Sampler, log zerolog.Logger) (*runCheckpoints, error) {
	if o.Every < 0 {
		return nil, fmt.Errorf("checkpoint every %d steps: must be >= 0", o.Every)
	}
	if o.Keep < 0 {
		return nil, fmt.Errorf("checkpoint keep %d: must be >= 0", o.Keep)
	}
	if o.Dir == "" && o.Resume == "" {
		return nil, nil
	}
	r := &runCheckpoints{opts: o}
	if o.Dir != "" {
		s, err := checkpoint.NewStore(o.Dir, o.Keep)
		if err != nil {
			return nil, err
		}
		removed, err := s.Cleanup()
		if err != nil {
			return nil, fmt.Errorf("checkpoint dir %s: cleanup: %w", o.Dir, err)
		}
		if len(removed) > 0 {
			log.Warn().Strs("removed", removed).Msg("removed incomplete checkpoints of an interrupted run")
		}
		r.store = s
		r.cp = NewCheckpointer(s, o.Writer, log)
	}
	if o.Resume != "" {
		res, err := tr.ResumeCheckpoint(r.store, o.Resume, 0)
		if err != nil {
			return nil, err
		}
		if res.Sampler == nil {
			log.Warn().Str("dir", res.Dir).Msg("checkpoint holds no sampler state: the data order restarts")
		} else if err := res.RestoreSampler(sampler); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// afterStep starts an asynchronous save when the step calls for one; it
// returns the failure of the previous save.
func (r *runCheckpoints) afterStep(ctx context.Context, tr *Trainer, sampler sampling.Sampler, last bool) error {
	if r == nil || r.cp == nil {
		return nil
	}
	step := tr.Step()
	if !last && (r.opts.Every == 0 || step%r.opts.Every != 0) {
		return nil
	}
	st := sampler.State()
	return r.cp.Save(ctx, tr, &st)
}

// finish waits up to timeout for the last save to commit.
func (r *runCheckpoints) finish(ctx context.Context, timeout time.Duration) error {
	if r == nil || r.cp == nil {
		return nil
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	return r.cp.Wait(wctx)
}

// blobRouterBias names the blob holding model.RouterState.Flat (saved only
// when aux-loss-free balancing is on).
const blobRouterBias = "router_bias"

func float32Bytes(x []float32) []byte {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}
