package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// WriteJob writes a CA, the coordinator's, the operator's and every
// worker's certificate, keys readable by the owner only, and no leftovers.
func TestWriteJob(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	j, err := WriteJob(dir, "job1", []string{"127.0.0.1", "localhost"}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Workers) != 3 {
		t.Fatalf("%d worker file sets", len(j.Workers))
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("directory: %v %v", st.Mode(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o644)
		if strings.HasSuffix(e.Name(), "-key.pem") {
			want = 0o600
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", e.Name(), info.Mode().Perm(), want)
		}
	}
	if len(names) != 1+2*5 { // ca + 5 pairs
		t.Fatalf("files %v", names)
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(j.Coordinator.CA)
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	coord := parseCert(t, j.Coordinator.Cert)
	if _, err := coord.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1",
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("coordinator certificate for 127.0.0.1: %v", err)
	}
	if _, err := coord.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.9.9.9"}); err == nil {
		t.Fatal("coordinator certificate verified for an address it was not issued for")
	}
	for _, f := range append(j.Workers, j.Operator) {
		if _, err := parseCert(t, f.Cert).Verify(x509.VerifyOptions{Roots: pool,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s: %v", f.Cert, err)
		}
	}
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// handshake runs a TLS handshake between server and client configs over a
// loopback connection; it returns the server's and the client's errors.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		s := tls.Server(c, server)
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		err = s.Handshake()
		if err == nil { // TLS 1.3 reports a refused client certificate on the first read
			_, err = s.Write([]byte{1})
		}
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: client}).DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		var b [1]byte
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(c, b[:])
		c.Close()
	}
	return <-done, err
}

// Mutual TLS: a client of the job is admitted; a client with a
// certificate of another CA or none is refused by the server; a client
// that trusts another CA refuses the server.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	j, err := WriteJob(filepath.Join(dir, "job"), "job", []string{"127.0.0.1"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	other, err := WriteJob(filepath.Join(dir, "other"), "other", []string{"127.0.0.1"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	server, err := j.Coordinator.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	good, err := j.Workers[0].ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(t, server, good); serr != nil || cerr != nil {
		t.Fatalf("job worker: server %v, client %v", serr, cerr)
	}
	// A certificate of another CA (trusting this job's CA, so only the
	// server's check is tested).
	wrongCert := Files{Cert: other.Workers[0].Cert, Key: other.Workers[0].Key, CA: j.Coordinator.CA}
	wc, err := wrongCert.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	// crypto/tls's client offers only a certificate of a CA the server
	// names; an attacker offers his anyway.
	wc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &wc.Certificates[0], nil }
	serr, _ := handshake(t, server, wc)
	var ue x509.UnknownAuthorityError
	if !errors.As(serr, &ue) {
		t.Fatalf("worker with another CA's certificate: server error %v, want unknown authority", serr)
	}
	// No certificate at all.
	nc := good.Clone()
	nc.Certificates = nil
	if serr, _ := handshake(t, server, nc); serr == nil || !strings.Contains(serr.Error(), "certificate") {
		t.Fatalf("worker without a certificate: server error %v", serr)
	}
	// A client that trusts another CA refuses the job's server.
	wrongCA := Files{Cert: j.Workers[0].Cert, Key: j.Workers[0].Key, CA: other.Coordinator.CA}
	wca, err := wrongCA.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	_, cerr := handshake(t, server, wca)
	var ve *tls.CertificateVerificationError
	if !errors.As(cerr, &ve) {
		t.Fatalf("client trusting another CA: %v, want a certificate verification error", cerr)
	}
}

func TestFilesCheck(t *testing.T) {
	if err := (Files{}).Check(); err != nil {
		t.Fatal(err)
	}
	err := Files{Cert: "c"}.Check()
	if err == nil || !strings.Contains(err.Error(), "--tls-key") || !strings.Contains(err.Error(), "--tls-ca") {
		t.Fatalf("partial set: %v", err)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "x.pem")
	if err := os.WriteFile(bad, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := WriteJob(filepath.Join(dir, "j"), "j", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := j.Operator
	f.CA = bad
	if _, err := f.ClientConfig(); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("CA file without a certificate: %v", err)
	}
	f = j.Operator
	f.Key = j.Coordinator.Key // does not match the certificate
	if _, err := f.ServerConfig(); err == nil || !strings.Contains(err.Error(), f.Cert) {
		t.Fatalf("mismatched key: %v", err)
	}
}

// A directory that cannot be made is an error naming it, and no worker
// count below zero is accepted.
func TestWriteJobErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteJob(filepath.Join(file, "tls"), "j", nil, 1); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("directory under a file: %v", err)
	}
	if _, err := WriteJob(t.TempDir(), "j", nil, -1); err == nil {
		t.Fatal("-1 workers accepted")
	}
}
