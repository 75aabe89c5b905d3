package checkpoint

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/huff0"
	"github.com/klauspost/compress/zstd"
)

func shuffle4Ref(dst, src []byte) {
	n := len(src) / 4
	for i := 0; i < n; i++ {
		for b := 0; b < 4; b++ {
			dst[b*n+i] = src[4*i+b]
		}
	}
}

func TestShuffle4MatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for _, words := range []int{0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 1000, 4099} {
		src := make([]byte, 4*words)
		for i := range src {
			src[i] = byte(rng.Uint32())
		}
		got, want := make([]byte, len(src)), make([]byte, len(src))
		shuffle4(got, src)
		shuffle4Ref(want, src)
		if !bytes.Equal(got, want) {
			t.Fatalf("%d words: shuffle4 differs from reference", words)
		}
		back := make([]byte, len(src))
		unshuffle4(back, got)
		if !bytes.Equal(back, src) {
			t.Fatalf("%d words: unshuffle4 does not invert shuffle4", words)
		}
	}
}

func TestPlanesRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	w, m, _ := trainingState(5003, 3)
	for name, data := range map[string][]float32{"weights": w, "moments": m, "zeros": make([]float32, 777), "one": {1.5}} {
		raw := append([]byte(nil), f32Bytes(data)...)
		out, _ := encodePlanes(nil, make([]byte, len(raw)), raw)
		got, err := decodePlanes(out, int64(len(raw)))
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("%s: round trip failed: %v", name, err)
		}
		// Damaged plane streams are errors, never panics.
		for k := 0; k < 200; k++ {
			bad := append([]byte(nil), out...)
			bad[rng.IntN(len(bad))] ^= byte(1 + rng.IntN(255))
			_, _ = decodePlanes(bad, int64(len(raw)))
			_, _ = decodePlanes(bad[:rng.IntN(len(bad))], int64(len(raw)))
		}
	}
}

func BenchmarkShuffle4(b *testing.B) {
	src := make([]byte, 4<<20)
	dst := make([]byte, len(src))
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		shuffle4(dst, src)
	}
}

// BenchmarkPlaneCoders compares Huffman-only (huff0, what the plane codec
// uses) with zstd's fastest level on the sign/exponent plane of weights.
func BenchmarkPlaneCoders(b *testing.B) {
	w, _, _ := trainingState(1<<18, 5)
	tmp := make([]byte, 4*len(w))
	shuffle4(tmp, f32Bytes(w))
	plane := tmp[3*len(w):]
	b.Run("huff0", func(b *testing.B) {
		b.SetBytes(int64(len(plane)))
		var out []byte
		s := &huff0.Scratch{}
		for i := 0; i < b.N; i++ {
			out = appendHuffPlane(out[:0], plane, s)
		}
		b.ReportMetric(float64(len(plane))/float64(len(out)), "ratio")
	})
	b.Run("zstd-fastest", func(b *testing.B) {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			b.Fatal(err)
		}
		defer enc.Close()
		b.SetBytes(int64(len(plane)))
		var out []byte
		for i := 0; i < b.N; i++ {
			out = enc.EncodeAll(plane, out[:0])
		}
		b.ReportMetric(float64(len(plane))/float64(len(out)), "ratio")
	})
}
