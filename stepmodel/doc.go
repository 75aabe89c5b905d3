// Package stepmodel predicts the time of one training step of a job on a
// mesh (compute per rank from measured kernel throughput, each
// collective's α-β cost on its link class, the overlap the runtime
// implements, memory per rank), enumerates and ranks meshes for plan auto,
// calibrates a profile on this machine and validates predictions against
// measured steps. The model's equations, the calibration and the
// validation tables are in docs/planner.md.
//
// It must not be imported by cluster or train (it builds on both).
package stepmodel
