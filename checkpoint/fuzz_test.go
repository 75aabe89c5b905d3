package checkpoint

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// seedShards returns real shard files of a few kinds (zstd, raw, blobs).
func seedShards(f *testing.F) [][]byte {
	rng := rand.New(rand.NewPCG(19, 20))
	ts, layout := standardTensors(rng)
	l := layout(2)
	var out [][]byte
	for _, opts := range []WriterOptions{{ChunkBytes: 32}, {Codec: CodecNone, ChunkBytes: 24}} {
		path := filepath.Join(f.TempDir(), "s")
		w, err := CreateShard(f.Context(), path, 1, opts)
		if err != nil {
			f.Fatal(err)
		}
		for _, tt := range ts {
			if err := w.WriteTensor(tt.name, tt.shape, l[tt.name][1], tt.extract(l[tt.name][1])); err != nil {
				f.Fatal(err)
			}
		}
		if err := w.WriteBlob("rng", []byte("0123456789abcdef0123456789")); err != nil {
			f.Fatal(err)
		}
		if _, err := w.Close(); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzShardDecode feeds arbitrary bytes to the shard decoder and, when the
// structure decodes, to every read path: none may panic, and allocations
// stay bounded by the limits whatever the lengths inside claim. With fix set
// the trailer's index and file CRCs are recomputed first, so mutations of
// the index reach its validation instead of stopping at the checksum.
func FuzzShardDecode(f *testing.F) {
	for _, s := range seedShards(f) {
		f.Add(s, false)
		f.Add(s, true)
		f.Add(s[:len(s)-1], false)
	}
	f.Add([]byte(shardMagic), false)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix {
			b = fixCRCs(b)
		}
		r, err := newShardReader(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			return
		}
		_ = r.Verify()
		for _, p := range r.Pieces() {
			n := p.Region.Len()
			if n > 1<<20 {
				continue // the caller sizes dst; the fuzzer should not make it huge
			}
			dst := make([]float32, n)
			_, _ = r.readInto(p.Name, p.Shape, p.Region, dst)
			w := Whole(p.Shape)
			if w.Len() <= 1<<20 {
				_, _ = r.readInto(p.Name, p.Shape, w, make([]float32, w.Len()))
			}
		}
		for _, name := range r.Blobs() {
			_, _ = r.ReadBlob(name)
		}
	})
}

// fixCRCs returns b with the trailer's CRCs made consistent, when the
// trailer's offsets are usable.
func fixCRCs(b []byte) []byte {
	if len(b) < headerSize+trailerSize {
		return b
	}
	b = append([]byte(nil), b...)
	tb := b[len(b)-trailerSize:]
	off := binary.LittleEndian.Uint64(tb[0:])
	n := binary.LittleEndian.Uint64(tb[8:])
	end := uint64(len(b) - trailerSize)
	if off > end || n > end-off {
		return b
	}
	binary.LittleEndian.PutUint32(tb[16:], crc32.Checksum(b[off:off+n], crcTable))
	binary.LittleEndian.PutUint32(tb[20:], crc32.Checksum(b[:end], crcTable))
	return b
}

// FuzzManifest: DecodeManifest never panics, and what it accepts re-encodes
// and decodes to an equal layout.
func FuzzManifest(f *testing.F) {
	rng := rand.New(rand.NewPCG(21, 22))
	ts, layout := standardTensors(rng)
	s, err := NewStore(f.TempDir(), 0)
	if err != nil {
		f.Fatal(err)
	}
	s.NoSync = true
	m := &Manifest{Version: ManifestVersion, Step: 5, Mesh: map[string]int{"dp": 2}, Config: []byte(`{"a":[1,2]}`)}
	l := layout(2)
	rankShards(f, s, m, 2, ts, l, WriterOptions{NoSync: true})
	seed, err := EncodeManifest(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"version":1,"step":1,"shards":[{"file":"a","rank":0,"size":48,"pieces":[{"name":"x","shape":[1099511627776],"region":{"flat":true,"offset":0,"length":1099511627776}}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		enc, err := EncodeManifest(m)
		if err != nil {
			t.Fatalf("accepted manifest does not re-encode: %v", err)
		}
		if _, err := DecodeManifest(enc); err != nil {
			t.Fatalf("re-encoded manifest rejected: %v", err)
		}
	})
}

// FuzzDecodePlanes: the plane decoder (and huff0 behind it) turns any input
// into raw bytes of the requested size or an error, never a panic.
func FuzzDecodePlanes(f *testing.F) {
	w, m, _ := trainingState(3000, 7)
	for _, d := range [][]float32{w, m, make([]float32, 100)} {
		raw := append([]byte(nil), f32Bytes(d)...)
		out, _ := encodePlanes(nil, make([]byte, len(raw)), raw)
		f.Add(out, uint32(len(d)))
	}
	f.Fuzz(func(t *testing.T, stored []byte, words uint32) {
		words = words%(1<<18) + 1
		raw, err := decodePlanes(stored, int64(words)*4)
		if err == nil && len(raw) != int(words)*4 {
			t.Fatalf("decoded %d bytes, want %d", len(raw), words*4)
		}
	})
}
