package collective

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Scratch buffers (frames that arrive before their receive, temporaries of
// the algorithms) come from power-of-two size classes, so steady-state
// collectives neither allocate nor clear memory. The free lists are plain
// stacks, not sync.Pools: a Pool is emptied by every garbage collection,
// and refilling it allocated (and the kernel zeroed) a collective's scratch
// memory again, which made the next collection come sooner. What a class
// keeps is bounded (keepBytes, keepBufs); the rest goes to the collector.
const (
	minBufClass = 12 // 4 KiB
	maxBufClass = 28 // 256 MiB; larger buffers are allocated directly
	keepBytes   = 128 << 20
	keepBufs    = 64
)

type bufList struct {
	mu   sync.Mutex
	free [][]byte
}

var bufLists [maxBufClass + 1]bufList

func bufClass(n int) int {
	k := bits.Len(uint(n - 1))
	if k < minBufClass {
		k = minBufClass
	}
	return k
}

// getBuf returns a buffer of length n with unspecified contents.
func getBuf(n int) []byte {
	if n <= 0 {
		return nil
	}
	k := bufClass(n)
	if k > maxBufClass {
		return make([]byte, n)
	}
	l := &bufLists[k]
	l.mu.Lock()
	if m := len(l.free); m > 0 {
		b := l.free[m-1]
		l.free[m-1] = nil
		l.free = l.free[:m-1]
		l.mu.Unlock()
		return b[:n]
	}
	l.mu.Unlock()
	return make([]byte, n, 1<<k)
}

// putBuf recycles a buffer from getBuf; the caller must not use it again.
func putBuf(b []byte) {
	c := cap(b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	k := bits.Len(uint(c - 1))
	if k < minBufClass || k > maxBufClass {
		return
	}
	l := &bufLists[k]
	l.mu.Lock()
	if n := len(l.free); n < keepBufs && (n+1)<<k <= max(keepBytes, 1<<k) {
		l.free = append(l.free, b[:0])
	}
	l.mu.Unlock()
}

// getF32 returns n float32s with unspecified contents (pooled memory is
// allocated as bytes with at least 8-byte alignment).
func getF32(n int) []float32 {
	b := getBuf(n * 4)
	if b == nil {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), cap(b)/4)[:n]
}

func putF32(x []float32) {
	if cap(x) == 0 {
		return
	}
	putBuf(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), cap(x)*4)[:0])
}
