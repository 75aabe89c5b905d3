package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
)

func init() {
	var addr, token, reason string
	var tlsFiles pki.Files
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop a running coordinator's job on every worker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tlsCfg, err := clientTLSConfig(tlsFiles)
			if err != nil {
				return err
			}
			if err := cluster.RequestStopTLS(context.Background(), addr, cluster.TokenOrEnv(token), reason, tlsCfg); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "stop requested at %s\n", addr)
			return nil
		},
	}
	addOperatorFlags(cmd.Flags(), &addr, &token, &tlsFiles)
	cmd.Flags().StringVar(&reason, "reason", "stopped by operator", "reason recorded in the job's status and logs")
	rootCmd.AddCommand(cmd)
}
