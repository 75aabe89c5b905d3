package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"

	"github.com/moetrain/moetrain/cluster"
)

func init() {
	var reason string
	cmd := operatorCmd("stop", "Stop a running coordinator's job on every worker",
		func(ctx context.Context, addr, token string, tlsCfg *tls.Config) error {
			if err := cluster.RequestStopTLS(ctx, addr, token, reason, tlsCfg); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "stop requested at %s\n", addr)
			return nil
		})
	cmd.Flags().StringVar(&reason, "reason", "stopped by operator", "reason recorded in the job's status and logs")
	rootCmd.AddCommand(cmd)
}
