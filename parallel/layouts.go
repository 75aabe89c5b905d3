package parallel

import "iter"

// Layouts yields every mesh of exactly n ranks that Mesh.Validate accepts:
// each tp and sp whose product divides n, dp = n/(tp·sp), and each ep that
// divides dp·sp, in increasing (tp, sp, ep) order. It yields nothing for
// n < 1. Whether a model fits a mesh (heads, experts, sequence length) is
// the caller's question.
func Layouts(n int) iter.Seq[Mesh] {
	return func(yield func(Mesh) bool) {
		for tp := 1; tp <= n; tp++ {
			for sp := 1; tp*sp <= n; sp++ {
				if n%(tp*sp) != 0 {
					continue
				}
				dp := n / (tp * sp)
				for ep := 1; ep <= dp*sp; ep++ {
					if (dp*sp)%ep == 0 && !yield(Mesh{DP: dp, SP: sp, TP: tp, EP: ep}) {
						return
					}
				}
			}
		}
	}
}
