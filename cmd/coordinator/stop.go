package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
)

func init() {
	var addr, token, reason string
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop a running coordinator's job on every worker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cluster.RequestStop(context.Background(), addr, cluster.TokenOrEnv(token), reason); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "stop requested at %s\n", addr)
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:7070", "coordinator control-plane address")
	cmd.Flags().StringVar(&token, "token", "", "job token (default $"+cluster.TokenEnv+")")
	cmd.Flags().StringVar(&reason, "reason", "stopped by operator", "reason recorded in the job's status and logs")
	rootCmd.AddCommand(cmd)
}
