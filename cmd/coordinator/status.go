package main

import (
	"context"
	"crypto/tls"
	"os"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/internal/cli"
)

func init() {
	rootCmd.AddCommand(operatorCmd("status", "Show the status of a running coordinator's job",
		func(ctx context.Context, addr, token string, tlsCfg *tls.Config) error {
			s, err := cluster.QueryStatusTLS(ctx, addr, token, tlsCfg)
			if err != nil {
				return err
			}
			return cluster.FormatStatus(os.Stdout, s)
		}))
}

// operatorCmd is a tool that talks to a running coordinator: run gets
// --addr, the token (--token, else $MOETRAIN_TOKEN) and the client TLS of
// the tool's TLS files (nil without them).
func operatorCmd(use, short string, run func(ctx context.Context, addr, token string, tlsCfg *tls.Config) error) *cobra.Command {
	var addr, token string
	var tlsFiles pki.Files
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tlsCfg, err := clientTLSConfig(tlsFiles)
			if err != nil {
				return err
			}
			return run(context.Background(), addr, cluster.TokenOrEnv(token), tlsCfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:7070", "coordinator control-plane address")
	f.StringVar(&token, "token", "", "job token (default $"+cluster.TokenEnv+")")
	cli.AddTLSFlags(f, &tlsFiles, "this tool's (launch writes RUN/tls/operator.pem)")
	return cmd
}
