//go:build linux && race

package collective

import (
	"sync"
	"sync/atomic"
)

// The race detector does not see the ordering that the rings' positions
// give (atomics on memory mapped from a file, outside the Go heap): with
// both ends of a ring in one process (the tests), every copy out of a ring
// would look racy against the copy into it. Under -race each position also
// touches an atomic in the Go heap, shared by both ends through the ring
// file's cookie, which the detector does see.
var shmRaceSync sync.Map // shmRaceKey → *atomic.Uint64

type shmRaceKey struct {
	cookie [16]byte
	dir    int
	tail   bool
}

func shmRaceWord(f *shmFile, dir int, tail bool) *atomic.Uint64 {
	v, _ := shmRaceSync.LoadOrStore(shmRaceKey{f.cookie, dir, tail}, new(atomic.Uint64))
	return v.(*atomic.Uint64)
}

// racePublish follows a store of a position (head, or tail when tail).
func (r *shmRing) racePublish(tail bool) { shmRaceWord(r.file, r.dir, tail).Add(1) }

// raceObserve follows a load of the other side's position.
func (r *shmRing) raceObserve(tail bool) { shmRaceWord(r.file, r.dir, tail).Load() }
