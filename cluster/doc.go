// Package cluster is moetrain's control plane and the worker's runtime
// around it (docs/control-plane.md): the coordinator and its state machine,
// the workers that join it and run their ranks, the planner and the local
// launcher. It must not hold model math or collective algorithms: a rank's
// training is package train, its communication package collective, and this
// package only wires them to the job (plan, data plane, checkpoints,
// progress).
//
//   - Core (core.go) is the coordinator's deterministic state machine:
//     events in (worker joined/left/lost, progress, error, tick, stop, shard
//     written, checkpoint committed), commands out (start with plan, abort,
//     stop, commit or drop a checkpoint, finish). No clock, goroutine or I/O.
//   - Coordinator (coordinator.go, service.go) is the I/O loop around it: the
//     gRPC service of cluster/proto, gossip membership (membership.go,
//     hashicorp/memberlist, encrypted with a key derived from the job token),
//     progress, and the job's Result.
//   - RunAgent (agent.go) is a worker: join, follow the command stream, run
//     the job with a Runner, report progress and errors. RunMesh
//     (runner_mesh.go) runs any mesh: data, tensor, expert and sequence
//     parallelism (train.MeshRank), with checkpoints (runner_ckpt.go).
//   - MakePlan (planner.go) lays a job's mesh (parallel.Mesh) over the joined
//     workers, or refuses an impossible request naming a layout that works.
//   - Launch (launch.go) is the local multi-process simulation behind
//     `coordinator launch`.
//
// Worker liveness (liveness.go) tells a dead worker from a starved one: a
// dead process closes its sockets (its command stream ends, a launcher sees
// it exit), a dead host stops answering the kernel's TCP keepalive; gRPC
// keepalives and gossip deaths (which a live process refutes) only count
// after a liveness bound that grows with the job's size and the worker
// processes per core. The first detector to fire names the worker; the job
// is aborted on every other worker.
// With --max-restarts the job recovers by itself: every rank resumes from
// the last committed checkpoint, on a replacement worker or, with
// --allow-shrink, on fewer data-parallel replicas; a restarted coordinator
// takes the job back from the run directory's job state
// (docs/control-plane.md#automatic-recovery).
package cluster
