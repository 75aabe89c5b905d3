package collective

import "testing"

// TestRingPool: the look-ahead of the reduce-scatter stays between 4 and 16
// segments and about ringPoolBytes of temporaries.
func TestRingPool(t *testing.T) {
	for _, c := range []struct{ segBytes, want int }{
		{64, 16}, {256 << 10, 16}, {512 << 10, 16}, {1 << 20, 8}, {2 << 20, 4}, {16 << 20, 4},
	} {
		if got := ringPool(c.segBytes / 4); got != c.want {
			t.Errorf("segment of %d bytes: %d temporaries, want %d", c.segBytes, got, c.want)
		}
	}
}
