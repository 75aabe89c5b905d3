// Command coordinator owns a moetrain job: it plans the parallel layout, runs
// local multi-process simulations, serves workers and benchmarks the runtime.
//
// Each subcommand lives in its own file and registers itself on rootCmd in an
// init function; a subcommand is registered only once it works.
//
// A command should parse flags and wire packages together, and must not grow
// library code of its own. Not yet so: the rank-process orchestration of
// `bench collectives` and `bench routing`, CPU pinning and cgroup CPU quotas
// still live here (see docs/architecture.md#packages).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "coordinator",
	Short:         "moetrain coordinator: plan, launch, serve and benchmark MoE training jobs",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "coordinator:", err)
		os.Exit(2)
	}
}
