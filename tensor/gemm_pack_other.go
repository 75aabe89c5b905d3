//go:build !amd64 || purego

package tensor

// Without assembly the portable packing loops do all the work.

func packStridedAsm(s []float32, ld, kc, w int, panel []float32) bool { return false }

func packContiguousAsm(s []float32, ld, kc, w, panels int, dst []float32) bool {
	return false
}
