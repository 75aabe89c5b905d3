package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/klauspost/compress/huff0"
)

// Plane codec (codecPlanes) for float32 chunks: the raw words are shuffled
// into four byte planes (shuffle4) and each plane is stored as
//
//	mode 1 byte: 0 = raw plane follows (n bytes)
//	             1 = Huffman blocks follow, one per planeBlock bytes of the
//	                 plane, each: type 1 byte (0 raw, 1 huff0 4X, 2 RLE) then
//	                 raw: the block; RLE: 1 byte; huff0: u32 length + stream
//
// Trained float32 state has one low-entropy plane (sign and exponent) and
// three planes of mantissa noise. A Huffman coder is the right tool for the
// first (there are no matches to find; it is faster than zstd's fastest
// level with a better ratio: BenchmarkPlaneCoders, see
// docs/decisions.md#float32-byte-planes-with-huffman-coding)
// and the noise planes are stored raw after a sampled entropy check, so
// compression costs little more than the shuffle and keeps up with the disk.

const (
	planeRaw  = 0
	planeHuff = 1

	blockRaw  = 0
	blockHuff = 1
	blockRLE  = 2

	// planeBlock is the Huffman block size (huff0 takes < 256 KiB).
	planeBlock = 128 << 10
	// planeEntropyLimit is the sampled entropy (bits/byte) above which a
	// plane is stored raw: coding could save at most ~3% of it.
	planeEntropyLimit = 7.75
)

// planeBufs holds the shuffled planes while a chunk is decoded: reused,
// because a fresh buffer per chunk costs its page faults on every read.
var planeBufs = sync.Pool{New: func() any { return new([]byte) }}

var huffScratch = sync.Pool{New: func() any { return &huff0.Scratch{Reuse: huff0.ReusePolicyNone} }}

// sampledEntropy estimates the Shannon entropy in bits per byte of b from up
// to 8192 evenly spaced bytes.
func sampledEntropy(b []byte) float64 {
	var hist [256]int
	step := max(1, len(b)/8192)
	n := 0
	for i := 0; i < len(b); i += step {
		hist[b[i]]++
		n++
	}
	h := 0.0
	for _, c := range hist {
		if c > 0 {
			p := float64(c) / float64(n)
			h -= p * math.Log2(p)
		}
	}
	return h
}

// encodePlanes appends the codecPlanes encoding of raw (len%4 == 0) to dst,
// using tmp (len(raw) bytes) for the shuffled planes. ok is false when the
// encoding is not smaller than raw, so the caller stores the chunk raw.
func encodePlanes(dst, tmp, raw []byte) (out []byte, ok bool) {
	shuffle4(tmp, raw)
	n := len(raw) / 4
	out = dst
	s := huffScratch.Get().(*huff0.Scratch)
	defer huffScratch.Put(s)
	for p := 0; p < 4; p++ {
		plane := tmp[p*n : (p+1)*n]
		if sampledEntropy(plane) >= planeEntropyLimit {
			out = append(out, planeRaw)
			out = append(out, plane...)
			continue
		}
		out = appendHuffPlane(append(out, planeHuff), plane, s)
	}
	return out, len(out)-len(dst) < len(raw)
}

// appendHuffPlane appends plane as Huffman blocks (see the format above).
func appendHuffPlane(out, plane []byte, s *huff0.Scratch) []byte {
	for off := 0; off < len(plane); off += planeBlock {
		blk := plane[off:min(off+planeBlock, len(plane))]
		s.Reuse = huff0.ReusePolicyNone
		comp, _, err := huff0.Compress4X(blk, s)
		switch {
		case errors.Is(err, huff0.ErrUseRLE):
			out = append(out, blockRLE, blk[0])
		case err != nil || len(comp)+5 >= len(blk):
			// Incompressible (or any coder refusal): keep the block.
			out = append(out, blockRaw)
			out = append(out, blk...)
		default:
			out = append(out, blockHuff)
			out = binary.LittleEndian.AppendUint32(out, uint32(len(comp)))
			out = append(out, comp...)
		}
	}
	return out
}

// decodePlanes decodes a codecPlanes chunk of rawLen bytes (validated:
// 0 < rawLen ≤ MaxChunkSize, rawLen%4 == 0) into its raw, unshuffled bytes.
func decodePlanes(stored []byte, rawLen int64) ([]byte, error) {
	n := int(rawLen / 4)
	pb := planeBufs.Get().(*[]byte)
	defer planeBufs.Put(pb)
	if int64(cap(*pb)) < rawLen {
		*pb = make([]byte, rawLen)
	}
	planes := (*pb)[:rawLen]
	in := stored
	for p := 0; p < 4; p++ {
		plane := planes[p*n : (p+1)*n]
		if len(in) < 1 {
			return nil, fmt.Errorf("plane %d: truncated", p)
		}
		mode := in[0]
		in = in[1:]
		switch mode {
		case planeRaw:
			if len(in) < n {
				return nil, fmt.Errorf("plane %d: %d bytes left for a raw plane of %d", p, len(in), n)
			}
			copy(plane, in[:n])
			in = in[n:]
		case planeHuff:
			for off := 0; off < n; off += planeBlock {
				var err error
				if in, err = decodeBlock(plane[off:min(off+planeBlock, n)], in); err != nil {
					return nil, fmt.Errorf("plane %d block at %d: %w", p, off, err)
				}
			}
		default:
			return nil, fmt.Errorf("plane %d: unknown mode %d", p, mode)
		}
	}
	if len(in) != 0 {
		return nil, fmt.Errorf("%d trailing bytes after the planes", len(in))
	}
	raw := make([]byte, rawLen)
	unshuffle4(raw, planes)
	return raw, nil
}

// decodeBlock fills blk from the front of in and returns the rest of in.
func decodeBlock(blk, in []byte) ([]byte, error) {
	if len(in) < 1 {
		return nil, errors.New("truncated")
	}
	typ := in[0]
	in = in[1:]
	switch typ {
	case blockRaw:
		if len(in) < len(blk) {
			return nil, fmt.Errorf("%d bytes left for a raw block of %d", len(in), len(blk))
		}
		copy(blk, in)
		return in[len(blk):], nil
	case blockRLE:
		if len(in) < 1 {
			return nil, errors.New("RLE block truncated")
		}
		for i := range blk {
			blk[i] = in[0]
		}
		return in[1:], nil
	case blockHuff:
		if len(in) < 4 {
			return nil, errors.New("huffman block length truncated")
		}
		l := binary.LittleEndian.Uint32(in)
		in = in[4:]
		if uint64(l) > uint64(len(in)) {
			return nil, fmt.Errorf("huffman block of %d bytes, %d left", l, len(in))
		}
		s, rest, err := huff0.ReadTable(in[:l], nil)
		if err != nil {
			return nil, fmt.Errorf("huffman table: %w", err)
		}
		s.MaxDecodedSize = len(blk)
		out, err := s.Decoder().Decompress4X(blk[:0:len(blk)], rest)
		if err != nil {
			return nil, fmt.Errorf("huffman: %w", err)
		}
		if len(out) != len(blk) {
			return nil, fmt.Errorf("huffman block decoded %d bytes, want %d", len(out), len(blk))
		}
		if &out[0] != &blk[0] {
			copy(blk, out)
		}
		return in[l:], nil
	default:
		return nil, fmt.Errorf("unknown block type %d", typ)
	}
}
