package checkpoint

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// hostLittleEndian is true on every platform Go's major ports run on; the
// big-endian path converts explicitly so the on-disk format stays little-endian.
var hostLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// f32Bytes returns the little-endian bytes of s. On little-endian hosts it is
// a view sharing s's memory (no copy; writing through it changes s, which
// readChunkSegs uses to read raw chunks in place); elsewhere it is a copy.
func f32Bytes(s []float32) []byte {
	if len(s) == 0 {
		return nil
	}
	if hostLittleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 4*len(s))
	}
	b := make([]byte, 4*len(s))
	for i, v := range s {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// f32View returns the floats of the little-endian bytes b (len%4 == 0),
// sharing b's memory on little-endian hosts. b must come from a fresh
// allocation (Go aligns those to at least 8 bytes).
func f32View(b []byte) []float32 {
	if len(b) < 4 {
		return nil
	}
	if hostLittleEndian && uintptr(unsafe.Pointer(&b[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
	}
	out := make([]float32, len(b)/4)
	decodeF32(out, b)
	return out
}

// decodeF32 writes the little-endian floats of b (len 4·len(dst)) into dst.
func decodeF32(dst []float32, b []byte) {
	if hostLittleEndian && len(dst) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*len(dst)), b)
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

// shuffle4 transposes src (a whole number of 4-byte words) into dst as four
// planes: every word's byte 0, then every byte 1, and so on. Float32 sign and
// exponent bytes vary slowly across weights, so that plane compresses well
// while interleaved words do not compress at all. Eight words per step with
// 64-bit loads and stores; shuffle4Ref is the plain reference.
func shuffle4(dst, src []byte) {
	n := len(src) / 4
	p0, p1, p2, p3 := dst[:n:n], dst[n:2*n:2*n], dst[2*n:3*n:3*n], dst[3*n:4*n:4*n]
	i := 0
	for ; i+8 <= n; i += 8 {
		s := src[4*i : 4*i+32 : 4*i+32]
		x0 := binary.LittleEndian.Uint64(s[0:])
		x1 := binary.LittleEndian.Uint64(s[8:])
		x2 := binary.LittleEndian.Uint64(s[16:])
		x3 := binary.LittleEndian.Uint64(s[24:])
		// pick gathers byte b of both words of x into 16 bits.
		pick := func(x uint64, b uint) uint64 { return x>>(8*b)&0xff | (x>>(8*b+32)&0xff)<<8 }
		binary.LittleEndian.PutUint64(p0[i:], pick(x0, 0)|pick(x1, 0)<<16|pick(x2, 0)<<32|pick(x3, 0)<<48)
		binary.LittleEndian.PutUint64(p1[i:], pick(x0, 1)|pick(x1, 1)<<16|pick(x2, 1)<<32|pick(x3, 1)<<48)
		binary.LittleEndian.PutUint64(p2[i:], pick(x0, 2)|pick(x1, 2)<<16|pick(x2, 2)<<32|pick(x3, 2)<<48)
		binary.LittleEndian.PutUint64(p3[i:], pick(x0, 3)|pick(x1, 3)<<16|pick(x2, 3)<<32|pick(x3, 3)<<48)
	}
	for ; i < n; i++ {
		p0[i], p1[i], p2[i], p3[i] = src[4*i], src[4*i+1], src[4*i+2], src[4*i+3]
	}
}

// unshuffle4 inverts shuffle4.
func unshuffle4(dst, src []byte) {
	n := len(src) / 4
	p0, p1, p2, p3 := src[:n:n], src[n:2*n:2*n], src[2*n:3*n:3*n], src[3*n:4*n:4*n]
	i := 0
	for ; i+8 <= n; i += 8 {
		a0 := binary.LittleEndian.Uint64(p0[i:])
		a1 := binary.LittleEndian.Uint64(p1[i:])
		a2 := binary.LittleEndian.Uint64(p2[i:])
		a3 := binary.LittleEndian.Uint64(p3[i:])
		d := dst[4*i : 4*i+32 : 4*i+32]
		for k := 0; k < 4; k++ {
			sh := uint(16 * k)
			x := (a0>>sh)&0xff | ((a1>>sh)&0xff)<<8 | ((a2>>sh)&0xff)<<16 | ((a3>>sh)&0xff)<<24 |
				((a0>>(sh+8))&0xff)<<32 | ((a1>>(sh+8))&0xff)<<40 | ((a2>>(sh+8))&0xff)<<48 | ((a3>>(sh+8))&0xff)<<56
			binary.LittleEndian.PutUint64(d[8*k:], x)
		}
	}
	for ; i < n; i++ {
		dst[4*i], dst[4*i+1], dst[4*i+2], dst[4*i+3] = p0[i], p1[i], p2[i], p3[i]
	}
}
