// Package launch starts a job's processes on this host: Launch is the
// local multi-process run behind `coordinator launch` (a coordinator in
// this process, one worker process per worker, their logs, the progress
// bar, the run directory's summary), and with --max-restarts it starts a
// replacement for a worker process that died (recovery_launch.go).
//
// It must not decide what a job does after a failure (the coordinator's
// state machine in package cluster does) nor run a rank itself (worker
// processes run cluster/worker); remote hosts are the launch scripts' and
// the workload manager's (scripts/, launchenv).
package launch
