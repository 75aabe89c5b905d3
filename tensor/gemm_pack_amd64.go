//go:build amd64 && !purego

package tensor

import (
	"math"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// AVX-512 packing routines (gemm_pack_amd64.s). kc and panels must be ≥ 1
// and every addressed element must exist; the Go wrappers below check that.
//
// packGather (w ≤ 16) and packGather32 (w = 32): dst[p*w+i] = src[i*ld+p]
// for p < kc, i < w. packCopy (w ≤ 16) and packCopy32 (w = 32):
// dst[j*kc*w + p*w + l] = src[p*ld + j*w + l] for p < kc, j < panels, l < w.
// mask is 1<<w - 1 (the lanes to move); masked loads never touch memory
// past lane w.

//go:noescape
func packGatherAVX512(dst, src *float32, ld, kc, w, mask int)

//go:noescape
func packGather32AVX512(dst, src *float32, ld, kc int)

//go:noescape
func packCopyAVX512(dst, src *float32, ld, kc, panels, w, mask int)

//go:noescape
func packCopy32AVX512(dst, src *float32, ld, kc, panels int)

// packTransAVX512 (generated into gemm_amd64.s, contract in gemm_gen.go)
// packs 16 k-columns at a time by an in-register 16×16 transpose:
// dst[p*dstStride/4 + i] = src[i*ld + p] for p < kc16 and lanes i in mask,
// reading rows (12 or 16) rows.
//
//go:noescape
func packTransAVX512(dst, src *float32, ld, kc16, dstStride, mask, rows int)

var packAVX512 = cpu.X86.HasAVX512F

// packStridedAsm packs one full w-lane panel (dst[p*w+l] = s[l*ld+p]),
// reporting false when no routine covers w or 32-bit gather indices cannot
// reach the last row. Runs of 16 k-columns go through the in-register
// transpose, the rest through gathers.
func packStridedAsm(s []float32, ld, kc, w int, panel []float32) bool {
	if !packAVX512 || (w != 12 && w != 16 && w != 32) || (w-1)*ld > math.MaxInt32/4 {
		return false
	}
	_ = s[(w-1)*ld+kc-1]
	_ = panel[kc*w-1]
	dst, src := unsafe.SliceData(panel), unsafe.SliceData(s)
	if kc16 := kc &^ 15; kc16 > 0 {
		if w == 32 {
			packTransAVX512(dst, src, ld, kc16, w*4, 0xffff, 16)
			packTransAVX512(&panel[16], &s[16*ld], ld, kc16, w*4, 0xffff, 16)
		} else {
			packTransAVX512(dst, src, ld, kc16, w*4, 1<<w-1, w)
		}
		if kc16 == kc {
			return true
		}
		dst, src = &panel[kc16*w], &s[kc16]
		kc -= kc16
	}
	if w <= 16 {
		packGatherAVX512(dst, src, ld, kc, w, 1<<w-1)
	} else {
		packGather32AVX512(dst, src, ld, kc)
	}
	return true
}

// packContiguousAsm copies panels full w-wide panels (dst[j*kc*w + p*w + l]
// = s[p*ld + j*w + l]), reporting false when no routine covers w.
func packContiguousAsm(s []float32, ld, kc, w, panels int, dst []float32) bool {
	if !packAVX512 || (w > 16 && w != 32) || w < 1 || panels < 1 {
		return false
	}
	_ = s[(kc-1)*ld+panels*w-1]
	_ = dst[panels*kc*w-1]
	if w <= 16 {
		packCopyAVX512(unsafe.SliceData(dst), unsafe.SliceData(s), ld, kc, panels, w, 1<<w-1)
	} else {
		packCopy32AVX512(unsafe.SliceData(dst), unsafe.SliceData(s), ld, kc, panels)
	}
	return true
}
