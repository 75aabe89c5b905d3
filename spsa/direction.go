package spsa

import (
	"math"

	"github.com/moetrain/moetrain/tensor"
)

// Directions are Rademacher vectors (every element ±1, equally likely),
// generated in counter mode: element i of the direction with seed s is bit
// i mod 64 of mix64(s + (i/64+1)·γ) (0 → +1, 1 → −1), the SplitMix64 output
// at position i/64+1 of a stream started at s. Any element is computable on
// its own, so the result does not depend on how the work is split over
// threads or devices, and one hash serves 64 parameters.
//
// Rademacher rather than Gaussian (MeZO's choice): ±ε and ±c are exact in
// float32, so generating a perturbation or an update term involves no
// rounding and no transcendental function whose last bit could differ
// between platforms; E[zzᵀ] = I as for a Gaussian, and the estimator's
// variance is no larger (E[z⁴] = 1 against 3).
//
// Every floating-point operation on the parameters is a single addition
// with nothing to fuse (no multiply), so no platform's fused multiply-add
// can change a bit.

const gamma = 0x9e3779b97f4a7c15 // SplitMix64 increment

// BlockSize is the number of parameters one hash covers.
const BlockSize = 64

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// DirectionSeed is the seed of direction dir of worker at step, in a job
// whose direction seed is job: the identifier every replica regenerates the
// direction from.
func DirectionSeed(job uint64, step int64, worker, dir uint32) uint64 {
	h := mix64(job ^ 0x5350_5341_6a6f_6221)
	h = mix64(h + uint64(step)*gamma)
	return mix64(h ^ (uint64(worker)<<32 | uint64(dir)))
}

// blockBits are the signs of block b (elements [64b, 64b+64)) of the
// direction with seed s.
func blockBits(s uint64, b int) uint64 { return mix64(s + uint64(b+1)*gamma) }

// Sign is element i of the direction with seed s: +1 or −1.
func Sign(s uint64, i int) float32 {
	if blockBits(s, i/BlockSize)>>(uint(i)%BlockSize)&1 == 1 {
		return -1
	}
	return 1
}

// signed is x with its sign flipped where bit t of bits is set: x·z exactly.
func signed(x float32, bits uint64, t uint) float32 {
	return math.Float32frombits(math.Float32bits(x) ^ uint32(bits>>t&1)<<31)
}

// Perturb sets dst[i] = src[i] + h·z[i] for the direction with seed s (one
// rounding per element), over threads goroutines (< 1: one). dst and src
// have the same length and may not overlap unless they are the same slice.
func Perturb(dst, src []float32, s uint64, h float32, threads int) {
	forBlocks(len(dst), threads, func(b0, b1 int) {
		for b := b0; b < b1; b++ {
			lo := b * BlockSize
			hi := min(lo+BlockSize, len(dst))
			bits := blockBits(s, b)
			d, x := dst[lo:hi], src[lo:hi:hi]
			for t := range d {
				d[t] = x[t] + signed(h, bits, uint(t))
			}
		}
	})
}

// forBlocks splits the BlockSize-blocks of n elements into at most threads
// contiguous ranges (at least 256 blocks, 16 Ki elements, each) and runs fn
// on each concurrently. Each element's result must depend on its own block
// only, so the split cannot change a bit.
func forBlocks(n, threads int, fn func(b0, b1 int)) {
	tensor.ParallelForThreads((n+BlockSize-1)/BlockSize, 256, threads, fn)
}
