// Package rankbench runs the coordinator's benchmarks across local rank
// processes: it starts one process per rank (re-executing a binary the
// caller names), hands them their peers' addresses and their control lines
// over stdin and stdout, pins them to CPUs or puts them under CPU quotas,
// and collects and prints their results. It also holds the rank side of
// each protocol, which the re-executed process calls.
//
// It must not parse command lines or define flags (package main does, and
// passes the resolved options and each rank's arguments in), hold
// collective algorithms, routing or model math (it calls collective, moe
// and train for those), or leave a rank process or a CPU-quota group behind
// when it returns, on success or on failure.
package rankbench
