package dp

import "github.com/moetrain/moetrain/model"

// Bucket is a contiguous range [Lo, Hi) of the flat gradient buffer made of
// whole layout entries, reduced as one collective.
type Bucket struct {
	Lo, Hi int
	// Expert buckets hold only expert tensors (layout entries with
	// Expert = true) and reduce over the expert-data-parallel group.
	Expert bool
}

// Len is the number of elements.
func (b Bucket) Len() int { return b.Hi - b.Lo }

// PlanBuckets cuts the layout into buckets of at most maxFloats elements
// (a single larger entry gets a bucket of its own), walking the entries from
// last to first: the backward finalises gradients in reverse layout order, so
// bucket 0 is the first to be ready. With splitExpert, expert and non-expert
// entries never share a bucket (they reduce over different groups). The
// buckets are returned in that order (decreasing offsets) and tile
// [0, l.Total) exactly.
func PlanBuckets(l model.Layout, maxFloats int, splitExpert bool) []Bucket {
	maxFloats = max(maxFloats, 1)
	var out []Bucket
	open := false
	var cur Bucket
	for i := len(l.Entries) - 1; i >= 0; i-- {
		e := l.Entries[i]
		n := e.Size()
		if n == 0 {
			continue
		}
		if open && (cur.Len()+n > maxFloats || (splitExpert && e.Expert != cur.Expert)) {
			out = append(out, cur)
			open = false
		}
		if !open {
			cur = Bucket{Lo: e.Offset + n, Hi: e.Offset + n, Expert: e.Expert}
			open = true
		}
		cur.Lo = e.Offset
		cur.Expert = cur.Expert && e.Expert
	}
	if open {
		out = append(out, cur)
	}
	return out
}

// ShardOf is member k's share of a bucket split over n ranks for ZeRO-1:
// blocks of s = ⌈len/n⌉ elements, member k owning [Lo + k·s, Lo + (k+1)·s)
// clipped to the bucket, so every rank but the last ones holds exactly s
// (the collective works on the bucket padded to n·s). Deterministic: it
// depends only on the bucket and n.
func ShardOf(b Bucket, n, k int) (lo, hi int) {
	s := (b.Len() + n - 1) / n
	lo = min(b.Lo+k*s, b.Hi)
	hi = min(b.Lo+(k+1)*s, b.Hi)
	return lo, hi
}
