// Package worker is a worker's runtime (docs/control-plane.md): RunAgent
// joins a coordinator, follows its command stream and reports progress and
// errors; a Runner runs the job's ranks — RunMesh any mesh of data, tensor,
// expert and sequence parallelism (train.MeshRank) with its checkpoints
// (runner_ckpt.go: when shards are written and reported, not what they
// hold), RunSPSA zeroth-order fine-tuning with the coordinator's log and
// joins between steps (CoordinatedRunner). The TCP data plane (dataplane.go)
// connects the ranks; RunWorkerProcess is a whole worker process.
//
// It must not make control-plane decisions (the coordinator's state machine
// in package cluster decides who runs, aborts or commits), start other
// processes (cluster/launch does), or hold model math or collective
// algorithms (train and collective do).
package worker
