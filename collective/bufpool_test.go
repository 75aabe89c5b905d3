package collective

import (
	"runtime"
	"testing"
	"unsafe"
)

// Scratch buffers outlive garbage collections (a sync.Pool would drop
// them), each class keeps a bounded number, and sizes are honoured.
func TestBufListKeepsAcrossGC(t *testing.T) {
	const n = 40 << 10 // class 64 KiB
	b := getBuf(n)
	if len(b) != n || cap(b) != 64<<10 {
		t.Fatalf("getBuf(%d): len %d cap %d, want %d and %d", n, len(b), cap(b), n, 64<<10)
	}
	putBuf(b)
	runtime.GC()
	runtime.GC()
	c := getBuf(n - 1)
	if unsafe.SliceData(c) != unsafe.SliceData(b) || len(c) != n-1 {
		t.Fatalf("buffer not reused after GC (len %d)", len(c))
	}

	// Fill one class past its bound: it keeps keepBufs at most.
	const k = 13 // 8 KiB
	var bufs [][]byte
	for range keepBufs + 10 {
		bufs = append(bufs, getBuf(1<<k))
	}
	for _, x := range bufs {
		putBuf(x)
	}
	l := &bufLists[k]
	l.mu.Lock()
	kept := len(l.free)
	l.mu.Unlock()
	if kept != keepBufs {
		t.Fatalf("class %d keeps %d buffers, want %d", k, kept, keepBufs)
	}
	// A large class is bounded by bytes: 128 MiB of 64 MiB buffers is two.
	big := [][]byte{getBuf(64 << 20), getBuf(64 << 20), getBuf(64 << 20)}
	for _, x := range big {
		putBuf(x)
	}
	l = &bufLists[26]
	l.mu.Lock()
	kept = len(l.free)
	for i := range l.free { // give the memory back for the rest of the tests
		l.free[i] = nil
	}
	l.free = l.free[:0]
	l.mu.Unlock()
	if kept != 2 {
		t.Fatalf("64 MiB class keeps %d buffers, want 2", kept)
	}
	// Buffers of other capacities are not taken.
	putBuf(make([]byte, 5000))
	if x := getBuf(5000); cap(x) != 8<<10 {
		t.Fatalf("getBuf(5000) cap %d, want 8192", cap(x))
	}
}
