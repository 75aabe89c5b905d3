// Package cluster is moetrain's control plane (docs/control-plane.md): the
// coordinator, its state machine, and what the coordinator and its workers
// agree on — the plan, the job's keys and TLS, gossip membership and the
// liveness bounds, the control client. It must not run a rank or start a
// process: a worker's runtime is cluster/worker, starting workers on this
// host is cluster/launch, and neither model math nor collective algorithms
// belong here.
//
//   - Core (core.go) is the coordinator's deterministic state machine:
//     events in (worker joined/left/lost, progress, error, tick, stop, shard
//     written, checkpoint committed), commands out (start with plan, abort,
//     stop, commit or drop a checkpoint, finish). No clock, goroutine or I/O.
//   - Coordinator (coordinator.go, service.go) is the I/O loop around it: the
//     gRPC service of cluster/proto, gossip membership (membership.go,
//     hashicorp/memberlist, encrypted with a key derived from the job token),
//     progress, checkpoint commits (coord_ckpt.go), the SPSA log it keeps
//     (spsa_coordlog.go), and the job's Result.
//   - MakePlan (planner.go) lays a job's mesh (parallel.Mesh) over the joined
//     workers, or refuses an impossible request naming a layout that works.
//   - QueryStatus and RequestStop (client.go) are the operator's client;
//     DialCoordinator is the connection every client opens.
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
