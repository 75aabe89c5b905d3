package main

import (
	"crypto/tls"

	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster/pki"
)

// addTLSFlags registers --tls-cert, --tls-key and --tls-ca (whose
// certificate: e.g. "this coordinator's").
func addTLSFlags(f *pflag.FlagSet, t *pki.Files, whose string) {
	f.StringVar(&t.Cert, "tls-cert", "", whose+" TLS certificate (PEM); with --tls-key and --tls-ca the control plane is mutual TLS, else cleartext")
	f.StringVar(&t.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&t.CA, "tls-ca", "", "the CA certificate (PEM) the other side's certificate must be signed by")
}

// serverTLSConfig is the coordinator's mutual TLS of t; nil when t is empty.
func serverTLSConfig(t pki.Files) (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	return t.ServerConfig()
}

// clientTLSConfig is a tool's mutual TLS of t; nil when t is empty.
func clientTLSConfig(t pki.Files) (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	return t.ClientConfig()
}
