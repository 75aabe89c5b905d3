package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

const (
	// ManifestVersion is the manifest format this package writes and reads.
	ManifestVersion = 1
	// ManifestFile is the manifest's name inside a step directory.
	ManifestFile = "manifest.json"
	// MaxManifestSize bounds the manifest a reader will load (64 MiB).
	MaxManifestSize = 64 << 20
	// maxBoxPieces bounds the box pieces of one tensor, whose pairwise
	// overlap check is quadratic.
	maxBoxPieces = 4096
)

// Manifest describes one committed checkpoint: what every shard holds and how
// it was produced. The committer (the coordinator of a multi-rank job, or the
// single process of `worker train --standalone`) builds it from the ranks'
// ShardInfo once all of them succeeded.
type Manifest struct {
	Version int   `json:"version"`
	Step    int64 `json:"step"`
	// Mesh records the parallel layout that wrote the checkpoint (e.g.
	// {"dp":2,"sp":1,"tp":1,"ep":2}); informational for readers, who may use
	// any other layout.
	Mesh map[string]int `json:"mesh,omitempty"`
	// Config is an opaque JSON document (the training config).
	Config json.RawMessage `json:"config,omitempty"`
	// Meta holds free-form strings (creation time, git revision, ...).
	Meta   map[string]string `json:"meta,omitempty"`
	Shards []ShardInfo       `json:"shards"`
}

// NewManifest returns the manifest of step made of the ranks' shards,
// ordered by rank. Set Mesh, Config and Meta before committing.
func NewManifest(step int64, shards []ShardInfo) *Manifest {
	sh := append([]ShardInfo(nil), shards...)
	sort.SliceStable(sh, func(i, j int) bool { return sh[i].Rank < sh[j].Rank })
	return &Manifest{Version: ManifestVersion, Step: step, Shards: sh}
}

// tensorLayout is every stored piece of one tensor, checked disjoint.
type tensorLayout struct {
	shape  []int64
	flat   bool
	pieces []pieceRef
}

type pieceRef struct {
	shard  int // index into Manifest.Shards
	region Region
}

// EncodeManifest returns the manifest as compact JSON (Config is re-compacted).
func EncodeManifest(m *Manifest) ([]byte, error) {
	if _, err := m.layout(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// DecodeManifest parses and validates a manifest (untrusted input).
func DecodeManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("manifest: %d bytes exceed %d", len(b), MaxManifestSize)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if _, err := m.layout(); err != nil {
		return nil, err
	}
	return &m, nil
}

// validShardFile reports whether name is a plain file name a manifest may
// reference (no directories, no hidden or temporary names).
func validShardFile(name string) bool {
	if name == "" || len(name) > 255 || name == ManifestFile || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".part") {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// layout validates m and returns the pieces of every tensor. Identical
// pieces in several shards (replicas) are kept once; any other overlap, a
// shape disagreement or a mix of box and flat pieces for one tensor is an
// error naming the tensor and shards.
func (m *Manifest) layout() (map[string]*tensorLayout, error) {
	if m.Version != ManifestVersion {
		return nil, fmt.Errorf("manifest: version %d, want %d", m.Version, ManifestVersion)
	}
	if m.Step < 0 {
		return nil, fmt.Errorf("manifest: step %d is negative", m.Step)
	}
	if len(m.Shards) == 0 {
		return nil, errors.New("manifest: no shards")
	}
	if len(m.Config) > 0 && !json.Valid(m.Config) {
		return nil, errors.New("manifest: config is not valid JSON")
	}
	files := map[string]bool{}
	tensors := map[string]*tensorLayout{}
	for si, sh := range m.Shards {
		if !validShardFile(sh.File) {
			return nil, fmt.Errorf("manifest: shard %d: invalid file name %q", si, sh.File)
		}
		if files[sh.File] {
			return nil, fmt.Errorf("manifest: shard %d: file %q listed twice", si, sh.File)
		}
		files[sh.File] = true
		if sh.Rank < 0 || sh.Size < headerSize+trailerSize {
			return nil, fmt.Errorf("manifest: shard %s: rank %d / size %d invalid", sh.File, sh.Rank, sh.Size)
		}
		names := map[string]bool{}
		for _, b := range sh.Blobs {
			if b == "" || names[b] {
				return nil, fmt.Errorf("manifest: shard %s: empty or duplicate blob name %q", sh.File, b)
			}
			names[b] = true
		}
		for _, p := range sh.Pieces {
			if p.Name == "" || names[p.Name] {
				return nil, fmt.Errorf("manifest: shard %s: empty or duplicate name %q", sh.File, p.Name)
			}
			names[p.Name] = true
			if err := p.Region.Validate(p.Shape); err != nil {
				return nil, fmt.Errorf("manifest: shard %s: tensor %q: region %v of shape %v: %w", sh.File, p.Name, p.Region, p.Shape, err)
			}
			t := tensors[p.Name]
			if t == nil {
				t = &tensorLayout{shape: p.Shape, flat: p.Region.Flat}
				tensors[p.Name] = t
			}
			if !slices.Equal(t.shape, p.Shape) {
				return nil, fmt.Errorf("manifest: tensor %q: shard %s says shape %v, shard %s says %v", p.Name, sh.File, p.Shape, m.Shards[t.pieces[0].shard].File, t.shape)
			}
			if t.flat != p.Region.Flat {
				return nil, fmt.Errorf("manifest: tensor %q: shard %s mixes flat and box pieces", p.Name, sh.File)
			}
			t.pieces = append(t.pieces, pieceRef{shard: si, region: p.Region})
		}
	}
	for name, t := range tensors {
		if err := t.dedupe(name, m); err != nil {
			return nil, err
		}
	}
	return tensors, nil
}

// dedupe drops replicated pieces and rejects partial overlaps.
func (t *tensorLayout) dedupe(name string, m *Manifest) error {
	overlapErr := func(a, b pieceRef) error {
		return fmt.Errorf("manifest: tensor %q: piece %v in shard %s overlaps piece %v in shard %s",
			name, a.region, m.Shards[a.shard].File, b.region, m.Shards[b.shard].File)
	}
	if t.flat {
		sort.SliceStable(t.pieces, func(i, j int) bool {
			a, b := t.pieces[i].region, t.pieces[j].region
			return a.Offset < b.Offset || a.Offset == b.Offset && a.Length < b.Length
		})
		out := t.pieces[:0]
		for _, p := range t.pieces {
			if p.region.Length == 0 {
				continue
			}
			if len(out) > 0 {
				last := out[len(out)-1]
				if last.region.Equal(p.region) {
					continue
				}
				if p.region.Offset < last.region.Offset+last.region.Length {
					return overlapErr(last, p)
				}
			}
			out = append(out, p)
		}
		t.pieces = out
		return nil
	}
	if len(t.pieces) > maxBoxPieces {
		return fmt.Errorf("manifest: tensor %q: %d box pieces exceed %d", name, len(t.pieces), maxBoxPieces)
	}
	var out []pieceRef
next:
	for _, p := range t.pieces {
		if p.region.Len() == 0 {
			continue
		}
		for _, q := range out {
			if q.region.Equal(p.region) {
				continue next
			}
			if overlapCount(t.shape, q.region, p.region) > 0 {
				return overlapErr(q, p)
			}
		}
		out = append(out, p)
	}
	t.pieces = out
	return nil
}
