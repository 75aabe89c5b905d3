package main

import (
	"crypto/tls"

	"github.com/moetrain/moetrain/cluster/pki"
)

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
