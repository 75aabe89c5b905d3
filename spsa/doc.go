// Package spsa is zeroth-order fine-tuning with shared randomness (MeZO's
// SPSA, distributed as in "Just One Byte (per gradient)"): each worker
// perturbs the weights along a direction regenerated from a
// (job seed, step, worker, direction) identifier, measures the loss at +ε
// and −ε on its own data, and sends only the projected gradient quantized to
// one byte. Every worker regenerates every other worker's direction and
// applies every update in one fixed order, so all replicas stay bitwise
// identical while a step moves a few bytes; a worker that joins later
// replays the log of (identifier, gradient) records from a checkpoint.
//
// The package needs no gradients, no activations kept for a backward and no
// optimizer moments. Design, byte counts and measurements:
// docs/algorithms/spsa.md.
//
// It must not hold the control plane (the coordinator's copy of the log and
// joins are package cluster's), nor change a parameter with anything but
// single additions: bit-identical replicas on every device depend on it.
package spsa
