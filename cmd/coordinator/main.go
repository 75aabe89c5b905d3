// Command coordinator owns a moetrain job: it plans the parallel layout, runs
// local multi-process simulations, serves workers and benchmarks the runtime.
//
// Each subcommand lives in its own file and registers itself on rootCmd in an
// init function; a subcommand is registered only once it works.
//
// It must not hold library code: a command parses flags and wires packages
// together (the rank processes of `bench collectives`, `bench routing` and
// `bench moe` and their CPU pinning are rankbench's, CPU quotas cpuquota's;
// see docs/architecture.md#packages).
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
