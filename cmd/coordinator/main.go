// Command coordinator owns a moetrain job: it plans the parallel layout, runs
// local multi-process simulations, serves workers and benchmarks the runtime.
//
// Each subcommand lives in its own file and registers itself on rootCmd in an
// init function; a subcommand is registered only once it works.
//
// A command parses flags and wires packages together and grows no library
// code of its own: the rank processes of `bench collectives` and `bench
// routing`, their CPU pinning and cgroup CPU quotas live in package rankbench
// (see docs/architecture.md#packages).
//
// It must not hold library code: it parses flags and wires packages
// (benchmark orchestration is rankbench's, CPU quotas cpuquota's, reports
// their packages').
package main

import (
	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/internal/cli"
)

var rootCmd = cli.Root("coordinator", "moetrain coordinator: plan, launch, serve and benchmark MoE training jobs")

func main() { cli.Main(rootCmd) }

// internalCmd is a hidden subcommand that this binary re-executes itself as
// (a worker or a benchmark's rank process); it takes flags only.
func internalCmd(use, short string, run func(cmd *cobra.Command) error) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Hidden: true, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd) }}
}
