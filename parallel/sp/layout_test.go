package sp

import (
	"slices"
	"testing"
)

func TestPositions(t *testing.T) {
	if got, want := Positions(3, 1, 2), []int{2, 3, 8, 9}; !slices.Equal(got, want) {
		t.Errorf("Positions(3, 1, 2) = %v, want %v", got, want)
	}
	// Every position of the sequence appears exactly once over the ranks.
	for _, sp := range []int{1, 2, 3, 4, 8} {
		seen := make([]int, 2*sp*3)
		for r := range sp {
			for _, p := range Positions(sp, r, 3) {
				seen[p]++
			}
		}
		for p, n := range seen {
			if n != 1 {
				t.Fatalf("sp %d: position %d held %d times", sp, p, n)
			}
		}
	}
}

func TestShardGatherRoundTrip(t *testing.T) {
	const b, width = 2, 3
	for _, sp := range []int{1, 2, 3, 5} {
		seq := 2 * sp * 2
		full := make([]float32, b*seq*width)
		for i := range full {
			full[i] = float32(i)
		}
		back := make([]float32, len(full))
		stats := make([]float32, b*2*seq) // heads = 2
		for i := range stats {
			stats[i] = float32(-i)
		}
		statsBack := make([]float32, len(stats))
		for r := range sp {
			loc := make([]float32, b*4*width)
			mustNil(t, Shard(loc, full, b, seq, width, sp, r))
			pos := Positions(sp, r, 2)
			for s := range b {
				for row, p := range pos {
					if got, want := loc[(s*4+row)*width], full[(s*seq+p)*width]; got != want {
						t.Fatalf("sp %d rank %d seq %d local row %d: %v, want token %d's %v", sp, r, s, row, got, p, want)
					}
				}
			}
			mustNil(t, Gather(back, loc, b, seq, width, sp, r))
			ls := make([]float32, b*2*4)
			mustNil(t, ShardStats(ls, stats, b, 2, seq, sp, r))
			mustNil(t, GatherStats(statsBack, ls, b, 2, seq, sp, r))
		}
		if !slices.Equal(back, full) || !slices.Equal(statsBack, stats) {
			t.Errorf("sp %d: gather of shards differs from the original", sp)
		}
	}
}

func TestLayoutErrors(t *testing.T) {
	if _, err := ChunkLen(10, 3); err == nil {
		t.Error("ChunkLen(10, 3): no error")
	}
	if _, err := ChunkLen(8, 0); err == nil {
		t.Error("ChunkLen(8, 0): no error")
	}
	if err := Shard(make([]float32, 4), make([]float32, 8), 1, 8, 1, 2, 2); err == nil {
		t.Error("rank 2 of 2: no error")
	}
	if err := Shard(make([]float32, 3), make([]float32, 8), 1, 8, 1, 2, 0); err == nil {
		t.Error("short local buffer: no error")
	}
}
