package checkpoint

// Prewarm readies, ahead of a process's first save, what a save of shards
// shard files at once takes from this package's pools: the direct writer's
// aligned blocks, their pages touched so that they are resident, and the
// compression probe's buffers. A process's first save otherwise pays for
// them inside the save (fresh pages are slow to fault in on some virtual
// machines; docs/decisions.md#checkpoint-io-at-disk-bandwidth). Training
// calls it when it opens its checkpoint store; later calls cost little,
// and what it readies stays in the pools a save returns it to.
func Prewarm(shards int) {
	want := min(max(shards, 1)*(directDepth+1), cap(directBufs))
	var blocks [][]byte
	for len(blocks) < want {
		b := getDirectBuf()
		b = b[:cap(b)]
		for i := 0; i < len(b); i += directAlign {
			b[i] = 0 // fault the page in now, not during the save
		}
		blocks = append(blocks, b)
	}
	for _, b := range blocks {
		putDirectBuf(b)
	}
	probes := make([]*probeBufs, max(shards, 1))
	for i := range probes {
		probes[i] = probePool.Get().(*probeBufs)
		for _, b := range [][]byte{probes[i].sample, probes[i].tmp, probes[i].out[:cap(probes[i].out)]} {
			for j := 0; j < len(b); j += directAlign {
				b[j] = 0
			}
		}
	}
	for _, p := range probes {
		probePool.Put(p)
	}
}
