package parallel

import (
	"slices"
	"testing"
)

// Layouts yields exactly the meshes found by trying every degree up to n
// (each one valid and of n ranks), in (tp, sp, ep) order, and stops when
// the caller does.
func TestLayoutsMatchesExhaustiveSearch(t *testing.T) {
	for n := -1; n <= 24; n++ {
		var want []Mesh
		for tp := 1; tp <= n; tp++ {
			for sp := 1; sp <= n; sp++ {
				for ep := 1; ep <= n; ep++ {
					for dp := 1; dp <= n; dp++ {
						m := Mesh{DP: dp, SP: sp, TP: tp, EP: ep}
						if m.World() == n && m.Validate() == nil {
							want = append(want, m)
						}
					}
				}
			}
		}
		got := slices.Collect(Layouts(n))
		if !slices.Equal(got, want) {
			t.Fatalf("n=%d: Layouts gave %v, want %v", n, got, want)
		}
		for _, m := range got {
			if nm, err := NewMesh(Config{DP: m.DP, SP: m.SP, TP: m.TP, EP: m.EP}, n); err != nil || nm != m {
				t.Fatalf("n=%d: NewMesh(%+v) = %+v, %v", n, m, nm, err)
			}
		}
		if len(want) > 1 {
			var first []Mesh
			for m := range Layouts(n) {
				first = append(first, m)
				if len(first) == 2 {
					break
				}
			}
			if !slices.Equal(first, want[:2]) {
				t.Fatalf("n=%d: the first two of a stopped loop are %v, want %v", n, first, want[:2])
			}
		}
	}
	if n := len(slices.Collect(Layouts(1))); n != 1 {
		t.Fatalf("one rank: %d layouts, want 1", n)
	}
}
