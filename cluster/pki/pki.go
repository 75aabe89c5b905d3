// Package pki issues the TLS identities of one job's control plane
// (docs/control-plane.md#tls): a certificate authority made for the job and
// the certificates it signs for the coordinator, each worker and the
// operator's tools, written into the run directory; and the crypto/tls
// configurations of mutual TLS built from such files or from a cluster's
// own PKI. Keys are ECDSA P-256; every certificate may serve as server
// and as client, so one file set works for any role.
//
// It must not know about jobs beyond a name and hosts, nor keep a CA key on
// disk.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/moetrain/moetrain/internal/atomicfile"
)

// DefaultValidity is how long a job's certificates are valid: long
// enough for any training run (an expired certificate refuses new
// connections, not the ones already open).
const DefaultValidity = 365 * 24 * time.Hour

// clockSkew backdates certificates so that a host whose clock is a little
// behind the issuer's accepts them at once.
const clockSkew = 5 * time.Minute

// CA is a job's certificate authority: its certificate and signing key.
// The key lives in memory only: a job's certificates are all issued when
// it starts.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// NewCA makes a certificate authority named name (the job) whose
// certificates are valid for validity (0 = DefaultValidity) from now.
func NewCA(name string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = DefaultValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "moetrain job CA " + name},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	return &CA{cert: cert, key: key, certPEM: pemBlock("CERTIFICATE", der)}, nil
}

// Identity is a certificate and its private key, PEM-encoded.
type Identity struct {
	CertPEM, KeyPEM []byte
}

// Issue signs a certificate for name, valid as long as the CA, for server and client
// authentication, whose subject alternative names are hosts (IP addresses
// or DNS names; a server must be reached by one of them).
func (ca *CA) Issue(name string, hosts []string) (Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Identity{}, fmt.Errorf("pki: key for %s: %w", name, err)
	}
	serial, err := serialNumber()
	if err != nil {
		return Identity{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     ca.cert.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Identity{}, fmt.Errorf("pki: certificate for %s: %w", name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Identity{}, fmt.Errorf("pki: key for %s: %w", name, err)
	}
	return Identity{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", kder)}, nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// Files names one party's TLS files: its certificate, its key and the CA
// certificate it trusts (PEM). All three or none are set.
type Files struct {
	Cert, Key, CA string
}

// Enabled reports whether any file is named.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Check refuses a partial set, naming the flags (--tls-cert, --tls-key,
// --tls-ca) that are missing.
func (f Files) Check() error {
	if !f.Enabled() {
		return nil
	}
	var missing []string
	for _, x := range []struct{ v, flag string }{{f.Cert, "--tls-cert"}, {f.Key, "--tls-key"}, {f.CA, "--tls-ca"}} {
		if x.v == "" {
			missing = append(missing, x.flag)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("TLS needs --tls-cert, --tls-key and --tls-ca together; missing %v", missing)
	}
	return nil
}

// load reads the key pair and the CA pool.
func (f Files) load() (tls.Certificate, *x509.CertPool, error) {
	if err := f.Check(); err != nil {
		return tls.Certificate{}, nil, err
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("TLS certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", f.CA)
	}
	return pair, pool, nil
}

// ServerConfig is the coordinator's side of mutual TLS: it presents its
// certificate and admits only clients with a certificate the CA signed.
func (f Files) ServerConfig() (*tls.Config, error) {
	pair, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}, nil
}

// ClientConfig is a worker's (or an operator tool's) side: it presents its
// certificate and accepts only a server whose certificate the CA signed
// for the host name or IP address it dials.
func (f Files) ClientConfig() (*tls.Config, error) {
	pair, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// Job is the TLS file set of a job written by WriteJob.
type Job struct {
	Dir         string
	Coordinator Files
	Operator    Files // for `coordinator status` and `stop`
	Workers     []Files
}

// WriteJob makes a CA for job and writes into dir (created 0700): ca.pem,
// coordinator.pem (valid for coordHosts), operator.pem and worker-<i>.pem
// for i < workers, each with its -key.pem (0600). Every file is written
// atomically (temporary file, fsync, rename), several at once, and the
// directory is fsynced once at the end; the CA's key is not written.
func WriteJob(dir, job string, coordHosts []string, workers int) (Job, error) {
	if workers < 0 {
		return Job{}, fmt.Errorf("pki: %d workers", workers)
	}
	ca, err := NewCA(job, 0)
	if err != nil {
		return Job{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Job{}, fmt.Errorf("pki: %w", err)
	}
	out := Job{Dir: dir}
	caFile := filepath.Join(dir, "ca.pem")
	files := []fileData{{caFile, ca.certPEM, 0o644}}
	issue := func(name string, hosts []string) (Files, error) {
		id, err := ca.Issue(name, hosts)
		if err != nil {
			return Files{}, err
		}
		f := Files{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem"), CA: caFile}
		files = append(files, fileData{f.Key, id.KeyPEM, 0o600}, fileData{f.Cert, id.CertPEM, 0o644})
		return f, nil
	}
	if out.Coordinator, err = issue("coordinator", coordHosts); err != nil {
		return Job{}, err
	}
	if out.Operator, err = issue("operator", nil); err != nil {
		return Job{}, err
	}
	for i := range workers {
		f, err := issue(fmt.Sprintf("worker-%d", i), nil)
		if err != nil {
			return Job{}, err
		}
		out.Workers = append(out.Workers, f)
	}
	if err := writeFiles(dir, files); err != nil {
		return Job{}, err
	}
	return out, nil
}

// fileData is one file for writeFiles.
type fileData struct {
	path string
	data []byte
	perm os.FileMode
}

// writeParallel bounds the files writeFiles has in flight: fsyncs issued
// together share the file system's journal commits.
const writeParallel = 16

// writeFiles writes every file atomically (atomicfile.Write), up to
// writeParallel at once, then fsyncs dir, which holds them all, so that
// their renames are durable too. It returns the first error.
func writeFiles(dir string, files []fileData) error {
	sem := make(chan struct{}, writeParallel)
	errs := make(chan error, len(files))
	for _, f := range files {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- atomicfile.Write(f.path, f.data, f.perm)
		}()
	}
	var first error
	for range files {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("pki: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("pki: sync %s: %w", dir, err)
	}
	return nil
}
