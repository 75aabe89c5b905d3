package checkpoint

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// safetensors format (huggingface/safetensors): an 8-byte little-endian
// unsigned header length N, N bytes of UTF-8 JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
// first byte after the header) plus an optional "__metadata__" object of
// string→string, then the tensors' raw little-endian row-major bytes. We pad
// the header with spaces to a multiple of 8 so every tensor is aligned, and
// lay the tensors out in name order with no gaps.

// maxSafetensorsHeader mirrors the reference implementation's limit.
const maxSafetensorsHeader = 100 << 20

// NamedTensor is a whole tensor for WriteSafetensors.
type NamedTensor struct {
	Name  string
	Shape []int64
	Data  []float32
}

type stTensor struct {
	name  string
	shape []int64
	read  func() ([]float32, error)
}

type stHeaderEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// WriteSafetensors writes tensors (dtype F32) and metadata to path atomically.
func WriteSafetensors(path string, tensors []NamedTensor, meta map[string]string) error {
	list := make([]stTensor, len(tensors))
	for i, t := range tensors {
		n, err := NumElements(t.Shape)
		if err != nil {
			return fmt.Errorf("safetensors %s: tensor %q: %w", path, t.Name, err)
		}
		if n != int64(len(t.Data)) {
			return fmt.Errorf("safetensors %s: tensor %q: %d values for shape %v", path, t.Name, len(t.Data), t.Shape)
		}
		data := t.Data
		list[i] = stTensor{name: t.Name, shape: t.Shape, read: func() ([]float32, error) { return data, nil }}
	}
	return writeSafetensors(path, list, meta, true)
}

// ExportOptions configure ExportSafetensors.
type ExportOptions struct {
	// Prefix selects the tensors to export (default ModelPrefix); it is
	// stripped from the exported names unless KeepPrefix.
	Prefix     string
	KeepPrefix bool
	// Metadata goes into "__metadata__"; "format": "pt" and "step" are added
	// unless set.
	Metadata map[string]string
	// NoSync skips fsync (tests only).
	NoSync bool
}

// ExportSafetensors writes the consolidated tensors of c selected by
// opts.Prefix to path (atomically: temp file, fsync, rename), reading one
// tensor at a time. It returns the exported names.
func ExportSafetensors(c *Checkpoint, path string, opts ExportOptions) ([]string, error) {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = ModelPrefix
	}
	meta := map[string]string{"format": "pt", "step": fmt.Sprint(c.Step())}
	for k, v := range opts.Metadata {
		meta[k] = v
	}
	var list []stTensor
	var names []string
	for _, name := range c.TensorNames() {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		out := name
		if !opts.KeepPrefix {
			out = strings.TrimPrefix(name, prefix)
		}
		if out == "" || out == "__metadata__" {
			return nil, fmt.Errorf("export %s: tensor %q has no name after stripping %q", path, name, prefix)
		}
		shape, _ := c.Shape(name)
		src := name
		list = append(list, stTensor{name: out, shape: shape, read: func() ([]float32, error) {
			d, _, err := c.ReadTensor(src)
			return d, err
		}})
		names = append(names, out)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("export %s: checkpoint %s has no tensor named %q...", path, c.Dir, prefix)
	}
	if err := writeSafetensors(path, list, meta, !opts.NoSync); err != nil {
		return nil, err
	}
	return names, nil
}

func writeSafetensors(path string, list []stTensor, meta map[string]string, sync bool) error {
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	header := map[string]any{}
	if len(meta) > 0 {
		header["__metadata__"] = meta
	}
	var off int64
	for i, t := range list {
		if i > 0 && list[i-1].name == t.name {
			return fmt.Errorf("safetensors %s: duplicate tensor %q", path, t.name)
		}
		if t.name == "__metadata__" {
			return fmt.Errorf("safetensors %s: reserved tensor name %q", path, t.name)
		}
		n, err := NumElements(t.shape)
		if err != nil {
			return fmt.Errorf("safetensors %s: tensor %q: %w", path, t.name, err)
		}
		shape := t.shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.name] = stHeaderEntry{DType: "F32", Shape: shape, DataOffsets: [2]int64{off, off + 4*n}}
		off += 4 * n
	}
	hb, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("safetensors %s: header: %w", path, err)
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	if len(hb) > maxSafetensorsHeader {
		return fmt.Errorf("safetensors %s: header of %d bytes exceeds %d", path, len(hb), maxSafetensorsHeader)
	}
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("safetensors %s: %w", path, err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	var lenb [8]byte
	binary.LittleEndian.PutUint64(lenb[:], uint64(len(hb)))
	if _, err := bw.Write(lenb[:]); err != nil {
		return fail(err)
	}
	if _, err := bw.Write(hb); err != nil {
		return fail(err)
	}
	for _, t := range list {
		data, err := t.read()
		if err != nil {
			return fail(fmt.Errorf("tensor %q: %w", t.name, err))
		}
		if _, err := bw.Write(f32Bytes(data)); err != nil {
			return fail(err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			return fail(err)
		}
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("safetensors %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("safetensors %s: %w", path, err)
	}
	if sync { // as writeFileAtomic: the rename is durable only once the directory is
		return syncDir(filepath.Dir(path))
	}
	return nil
}
