package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// VerifyLevel says how much Open checks before returning a checkpoint.
type VerifyLevel int

const (
	// VerifyQuick checks the manifest and, for every shard, its size, header,
	// trailer, index and recorded checksum against the manifest. Reads then
	// check the CRCs of every chunk they touch.
	VerifyQuick VerifyLevel = iota
	// VerifyFull also reads every byte of every shard (Checkpoint.Verify).
	VerifyFull
)

// OpenOptions configure Open.
type OpenOptions struct {
	Verify VerifyLevel
}

// Skipped is a checkpoint Open passed over while resolving "latest".
type Skipped struct {
	Step   int64
	Reason error
}

// OpenReport says which checkpoint Open chose and why others were skipped.
type OpenReport struct {
	Dir     string
	Step    int64
	Skipped []Skipped // newer checkpoints that were not intact, newest first
	// Latest is the step the LATEST file names (-1 if missing); it lags the
	// chosen step when a crash hit between publishing and updating LATEST.
	Latest int64
}

func (r *OpenReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "checkpoint %s (step %d)", r.Dir, r.Step)
	for _, s := range r.Skipped {
		fmt.Fprintf(&b, "; skipped step %d: %v", s.Step, s.Reason)
	}
	if r.Latest >= 0 && r.Latest != r.Step {
		fmt.Fprintf(&b, "; LATEST names step %d", r.Latest)
	}
	return b.String()
}

// Checkpoint is an opened, committed checkpoint. Its methods are safe for
// concurrent use.
type Checkpoint struct {
	Dir      string
	Manifest *Manifest
	shards   []*ShardReader // parallel to Manifest.Shards
	tensors  map[string]*tensorLayout
}

// Open resolves ref in the store: "latest" (or "") is the newest intact
// committed checkpoint, falling back past damaged ones (the report says which
// and why); a decimal number is that step; anything else is a path to a step
// directory.
func (s *Store) Open(ref string, opts OpenOptions) (*Checkpoint, *OpenReport, error) {
	rep := &OpenReport{Latest: -1}
	if l, ok := s.Latest(); ok {
		rep.Latest = l
	}
	if ref != "" && ref != "latest" {
		dir := ref
		if n, err := strconv.ParseInt(ref, 10, 64); err == nil {
			dir = s.StepDir(n)
		}
		c, err := OpenDir(dir, opts)
		if err != nil {
			return nil, nil, err
		}
		rep.Dir, rep.Step = c.Dir, c.Step()
		return c, rep, nil
	}
	steps, err := s.Steps()
	if err != nil {
		return nil, nil, err
	}
	for i := len(steps) - 1; i >= 0; i-- {
		c, err := OpenDir(s.StepDir(steps[i]), opts)
		if err != nil {
			rep.Skipped = append(rep.Skipped, Skipped{Step: steps[i], Reason: err})
			continue
		}
		rep.Dir, rep.Step = c.Dir, c.Step()
		return c, rep, nil
	}
	if len(rep.Skipped) > 0 {
		return nil, rep, fmt.Errorf("no intact checkpoint in %s: %s", s.dir, rep.String())
	}
	return nil, rep, fmt.Errorf("no checkpoint in %s", s.dir)
}

// OpenDir opens the committed checkpoint in dir.
func OpenDir(dir string, opts OpenOptions) (*Checkpoint, error) {
	mp := filepath.Join(dir, ManifestFile)
	f, err := os.Open(mp)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxManifestSize+1))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: read %s: %w", mp, err)
	}
	m, err := DecodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mp, err)
	}
	layout, err := m.layout() // DecodeManifest validated it; never fails here
	if err != nil {
		return nil, fmt.Errorf("%s: %w", mp, err)
	}
	c := &Checkpoint{Dir: dir, Manifest: m, tensors: layout}
	for _, sh := range m.Shards {
		path := filepath.Join(dir, sh.File)
		r, err := OpenShard(path)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.shards = append(c.shards, r)
		if r.Size() != sh.Size {
			c.Close()
			return nil, fmt.Errorf("shard %s: %d bytes, manifest says %d (truncated or replaced)", path, r.Size(), sh.Size)
		}
		if r.CRC() != sh.CRC || r.Rank() != sh.Rank {
			c.Close()
			return nil, fmt.Errorf("shard %s: checksum %08x rank %d, manifest says %08x rank %d", path, r.CRC(), r.Rank(), sh.CRC, sh.Rank)
		}
		if err := matchPieces(r, sh); err != nil {
			c.Close()
			return nil, fmt.Errorf("shard %s: %w", path, err)
		}
	}
	if opts.Verify == VerifyFull {
		if err := c.Verify(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// matchPieces checks that the shard's index holds what the manifest says.
func matchPieces(r *ShardReader, sh ShardInfo) error {
	got := r.Pieces()
	if len(got) != len(sh.Pieces) {
		return fmt.Errorf("index has %d tensors, manifest %d", len(got), len(sh.Pieces))
	}
	for i, p := range sh.Pieces {
		g := got[i]
		if g.Name != p.Name || !slices.Equal(g.Shape, p.Shape) || !g.Region.Equal(p.Region) || g.CRC != p.CRC {
			return fmt.Errorf("tensor %q: index says %s%v %v, manifest %s%v %v", p.Name, g.Name, g.Shape, g.Region, p.Name, p.Shape, p.Region)
		}
	}
	return nil
}

// Close closes the shard files.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, r := range c.shards {
		if err := r.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	c.shards = nil
	return errors.Join(errs...)
}

// Step is the checkpoint's training step.
func (c *Checkpoint) Step() int64 { return c.Manifest.Step }

// TensorNames lists every stored tensor, sorted.
func (c *Checkpoint) TensorNames() []string {
	out := make([]string, 0, len(c.tensors))
	for n := range c.tensors {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Shape returns the global shape of tensor name.
func (c *Checkpoint) Shape(name string) ([]int64, bool) {
	t, ok := c.tensors[name]
	if !ok {
		return nil, false
	}
	return append([]int64(nil), t.shape...), true
}

// Verify reads every shard completely and checks every checksum, verifying
// up to GOMAXPROCS shards at a time. It returns the errors of every bad
// shard, in shard order.
func (c *Checkpoint) Verify() error {
	errs := make([]error, len(c.shards))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, r := range c.shards {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			errs[i] = r.Verify()
			<-sem
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// maxPieceReads bounds the pieces of one ReadRegion read at a time.
const maxPieceReads = 4

// ReadRegion fills dst (len == want.Len(), row-major order of want) with the
// region want of tensor name, assembled from whichever pieces cover it, so a
// reader may use a layout different from the writer's. Every element must be
// covered; corrupt chunks are reported naming shard and tensor.
func (c *Checkpoint) ReadRegion(name string, want Region, dst []float32) error {
	t, ok := c.tensors[name]
	if !ok {
		return fmt.Errorf("checkpoint %s: no tensor %q", c.Dir, name)
	}
	if err := want.Validate(t.shape); err != nil {
		return fmt.Errorf("checkpoint %s: tensor %q: region %v of shape %v: %w", c.Dir, name, want, t.shape, err)
	}
	if int64(len(dst)) != want.Len() {
		return fmt.Errorf("checkpoint %s: tensor %q: dst has %d elements, region %v has %d", c.Dir, name, len(dst), want, want.Len())
	}
	var pieces []int // shard of each piece that may overlap want
	for _, p := range t.pieces {
		if p.region.Flat == want.Flat && overlapCount(t.shape, p.region, want) == 0 {
			continue
		}
		pieces = append(pieces, p.shard)
	}
	// Pieces are disjoint (the manifest keeps one of identical replicas),
	// so they fill disjoint parts of dst and are read concurrently: pieces
	// in different shards are sequential streams of different files, which
	// the device serves faster together than one after the other.
	ns := make([]int64, len(pieces))
	errs := make([]error, len(pieces))
	sem := make(chan struct{}, maxPieceReads)
	var wg sync.WaitGroup
	for i, sh := range pieces {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			ns[i], errs[i] = c.shards[sh].readInto(name, t.shape, want, dst)
			<-sem
		}()
	}
	wg.Wait()
	var covered int64
	for i := range pieces {
		if errs[i] != nil {
			return errs[i]
		}
		covered += ns[i]
	}
	if covered != want.Len() {
		return fmt.Errorf("checkpoint %s: tensor %q region %v: %w (%d of %d elements)", c.Dir, name, want, errNotCovered, covered, want.Len())
	}
	return nil
}

// ReadTensor returns the whole tensor name and its shape.
func (c *Checkpoint) ReadTensor(name string) ([]float32, []int64, error) {
	t, ok := c.tensors[name]
	if !ok {
		return nil, nil, fmt.Errorf("checkpoint %s: no tensor %q", c.Dir, name)
	}
	w := Whole(t.shape)
	dst := make([]float32, w.Len())
	if err := c.ReadRegion(name, w, dst); err != nil {
		return nil, nil, err
	}
	return dst, append([]int64(nil), t.shape...), nil
}

// Blob returns blob name written by rank.
func (c *Checkpoint) Blob(rank int, name string) ([]byte, error) {
	for i, sh := range c.Manifest.Shards {
		if sh.Rank != rank {
			continue
		}
		for _, b := range sh.Blobs {
			if b == name {
				return c.shards[i].ReadBlob(name)
			}
		}
	}
	return nil, fmt.Errorf("checkpoint %s: no blob %q from rank %d", c.Dir, name, rank)
}

// HasBlob reports whether rank's shard lists blob name (Blob reads it).
func (c *Checkpoint) HasBlob(rank int, name string) bool {
	for _, sh := range c.Manifest.Shards {
		if sh.Rank == rank && slices.Contains(sh.Blobs, name) {
			return true
		}
	}
	return false
}

// Ranks lists the ranks that wrote shards, sorted.
func (c *Checkpoint) Ranks() []int {
	seen := map[int]bool{}
	var out []int
	for _, sh := range c.Manifest.Shards {
		if !seen[sh.Rank] {
			seen[sh.Rank] = true
			out = append(out, sh.Rank)
		}
	}
	sort.Ints(out)
	return out
}
