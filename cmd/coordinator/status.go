package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
)

func init() {
	var addr, token string
	var tlsFiles pki.Files
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the status of a running coordinator's job",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tlsCfg, err := clientTLSConfig(tlsFiles)
			if err != nil {
				return err
			}
			s, err := cluster.QueryStatusTLS(context.Background(), addr, cluster.TokenOrEnv(token), tlsCfg)
			if err != nil {
				return err
			}
			return cluster.FormatStatus(os.Stdout, s)
		},
	}
	addOperatorFlags(cmd.Flags(), &addr, &token, &tlsFiles)
	rootCmd.AddCommand(cmd)
}

// addOperatorFlags registers the flags of a tool that talks to a running
// coordinator: --addr, --token and the tool's TLS files.
func addOperatorFlags(f *pflag.FlagSet, addr, token *string, t *pki.Files) {
	f.StringVar(addr, "addr", "127.0.0.1:7070", "coordinator control-plane address")
	f.StringVar(token, "token", "", "job token (default $"+cluster.TokenEnv+")")
	addTLSFlags(f, t, "this tool's (launch writes RUN/tls/operator.pem)")
}
