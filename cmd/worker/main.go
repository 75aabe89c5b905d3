// Command worker runs moetrain training: standalone (`worker train
// --standalone`) or as a member of a coordinator's job.
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
	Use:           "worker",
	Short:         "moetrain worker: train standalone or join a coordinator's job",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
}
