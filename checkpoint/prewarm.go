package checkpoint

// Prewarm readies, ahead of a process's first save, what a save of shards
// shard files at once takes from this package's pools: the page-cache
// writer's bounce buffers and the compression probe's buffers, their pages
// touched so that they are resident. A process's first save otherwise pays
// for them inside the save (fresh pages are slow to fault in on some virtual
// machines; docs/decisions.md#checkpoint-io-at-disk-bandwidth). Training
// calls it when it opens its checkpoint store; later calls cost little,
// and what it readies stays in the pools a save returns it to. The direct
// writer's blocks (WriterOptions.DirectIO, not the default) are not
// readied.
func Prewarm(shards int) {
	want := min(max(shards, 1), cap(bounceBufs))
	var bufs [][]byte
	for len(bufs) < want {
		b := getBounceBuf()
		for i := 0; i < len(b); i += directAlign {
			b[i] = 0 // fault the page in now, not during the save
		}
		bufs = append(bufs, b)
	}
	for _, b := range bufs {
		putBounceBuf(b)
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
