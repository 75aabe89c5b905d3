// Command coordinator owns a moetrain job: it plans the parallel layout, runs
// local multi-process simulations, serves workers and benchmarks the runtime.
//
// Each subcommand lives in its own file and registers itself on rootCmd in an
// init function; a subcommand is registered only once it works.
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
