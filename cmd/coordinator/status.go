package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
)

func init() {
	var addr, token string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the status of a running coordinator's job",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := cluster.QueryStatus(context.Background(), addr, cluster.TokenOrEnv(token))
			if err != nil {
				return err
			}
			return cluster.FormatStatus(os.Stdout, s)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:7070", "coordinator control-plane address")
	cmd.Flags().StringVar(&token, "token", "", "job token (default $"+cluster.TokenEnv+")")
	rootCmd.AddCommand(cmd)
}
