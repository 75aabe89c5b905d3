//go:build !amd64

package collective

const hasVectorAdd = false

func addVector(dst, a, b []float32) { addToGeneric(dst, a, b) }
