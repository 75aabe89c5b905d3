package worker

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/cluster/pki"
	pb "github.com/moetrain/moetrain/cluster/proto"
)

// testPKI is a job's TLS files and those of another job (whose CA the
// job's parties do not trust).
type testPKI struct {
	job, other pki.Job
}

func newTestPKI(t *testing.T, workers int) testPKI {
	t.Helper()
	dir := t.TempDir()
	job, err := pki.WriteJob(filepath.Join(dir, "job"), "job", []string{"127.0.0.1"}, workers)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.WriteJob(filepath.Join(dir, "other"), "other", []string{"127.0.0.1"}, workers)
	if err != nil {
		t.Fatal(err)
	}
	return testPKI{job, other}
}

// mustTLS is the config cfg (a pki.Files' ServerConfig or ClientConfig)
// makes.
func mustTLS(t *testing.T, cfg func() (*tls.Config, error)) *tls.Config {
	t.Helper()
	c, err := cfg()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startCoordinator runs c until the test ends (stopping its job then).
func startCoordinator(t *testing.T, c *cluster.Coordinator, token string, tlsCfg *tls.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan struct{})
	go func() { _, _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() {
		_ = cluster.RequestStopTLS(context.Background(), c.Addr(), token, "test over", tlsCfg)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("coordinator did not end within 10 s of the stop")
		}
		cancel()
	})
}

// A TLS coordinator refuses, on gRPC, a worker whose certificate is not
// signed by the job's CA (offered or not), one without TLS, and one with
// the job's certificate but a wrong token; a worker that trusts another
// CA refuses the coordinator. The refusals are fast (the worker's
// RefusedError, not its join timeout) except for the cleartext worker,
// which cannot tell a refusal from a coordinator not up yet. None of them
// joined; then the job's worker joins and runs.
func TestTLSControlPlaneRefusals(t *testing.T) {
	p := newTestPKI(t, 1)
	c := jobtest.NewCoordinator(t, 1, func(cfg *cluster.CoordinatorConfig) { cfg.TLS = mustTLS(t, p.job.Coordinator.ServerConfig) })
	operator := mustTLS(t, p.job.Operator.ClientConfig)
	startCoordinator(t, c, "tok", operator)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	agent := func(token string, tlsCfg *tls.Config, joinTimeout time.Duration, runner Runner) error {
		return RunAgent(ctx, AgentConfig{Coordinator: c.Addr(), Token: token, TLS: tlsCfg, BindIP: "127.0.0.1", Log: zerolog.Nop(),
			Membership: jobtest.FastGossip(), Runner: runner, JoinTimeout: joinTimeout,
			NewDataPlane: func(string) (DataPlane, error) { return fakeData{"127.0.0.1:1"}, nil }})
	}
	foreign := mustTLS(t, pki.Files{Cert: p.other.Workers[0].Cert, Key: p.other.Workers[0].Key, CA: p.job.Coordinator.CA}.ClientConfig)
	forced := foreign.Clone()
	forced.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &forced.Certificates[0], nil }
	wrongCA := mustTLS(t, pki.Files{Cert: p.job.Workers[0].Cert, Key: p.job.Workers[0].Key, CA: p.other.Coordinator.CA}.ClientConfig)
	for _, tc := range []struct {
		name, token string
		tls         *tls.Config
		want        string
	}{
		{"another CA's certificate (not offered)", "tok", foreign, "refused this worker's certificate"},
		{"another CA's certificate (offered anyway)", "tok", forced, "refused this worker's certificate"},
		{"trusts another CA", "tok", wrongCA, "does not trust"},
		{"job certificate, wrong token", "bad", mustTLS(t, p.job.Workers[0].ClientConfig), "wrong job token"},
	} {
		err := agent(tc.token, tc.tls, 20*time.Second, nil)
		var ref *RefusedError
		if !errors.As(err, &ref) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a refusal saying %q", tc.name, err, tc.want)
		}
	}
	if err := agent("tok", nil, time.Second, nil); err == nil || !strings.Contains(err.Error(), "could not join") {
		t.Errorf("cleartext worker: %v, want no join", err)
	}
	if _, err := cluster.QueryStatus(ctx, c.Addr(), "tok"); err == nil {
		t.Error("a cleartext status request was answered")
	}
	s, err := cluster.QueryStatusTLS(ctx, c.Addr(), "tok", operator)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Workers) != 0 {
		t.Fatalf("refused workers joined: %v", s.Workers)
	}
	joined := make(chan error, 1)
	go func() {
		joined <- agent("tok", mustTLS(t, p.job.Workers[0].ClientConfig), 20*time.Second, stepper(-1, 0, true))
	}()
	for s.Phase != string(cluster.PhaseRunning) {
		time.Sleep(10 * time.Millisecond)
		if s, err = cluster.QueryStatusTLS(ctx, c.Addr(), "tok", operator); err != nil {
			t.Fatal(err)
		}
	}
	if err := cluster.RequestStopTLS(ctx, c.Addr(), "tok", "done", operator); err != nil {
		t.Fatal(err)
	}
	if err := <-joined; err != nil {
		t.Fatalf("the job's worker: %v", err)
	}
}

// fakeCoordinator counts the requests a coordinator impostor receives.
type fakeCoordinator struct {
	pb.UnimplementedCoordinatorServer
	calls atomic.Int64
}

func (f *fakeCoordinator) Join(context.Context, *pb.JoinRequest) (*pb.JoinResponse, error) {
	f.calls.Add(1)
	return &pb.JoinResponse{WorkerId: "w0", JobId: "fake"}, nil
}

// A fake coordinator cannot make a worker connect: one with a
// self-signed certificate (another CA) is refused at its certificate, at
// once; one without TLS never completes a handshake. Neither receives a
// request.
func TestTLSWorkerRefusesFakeCoordinator(t *testing.T) {
	p := newTestPKI(t, 1)
	ca, err := pki.NewCA("impostor", 0)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.Issue("coordinator", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		creds []grpc.ServerOption
		want  string
	}{
		{"self-signed", []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}}))}, "does not trust"},
		{"cleartext", nil, "could not join"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fake := &fakeCoordinator{}
			srv := grpc.NewServer(tc.creds...)
			pb.RegisterCoordinatorServer(srv, fake)
			go func() { _ = srv.Serve(ln) }()
			defer srv.Stop()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			joinTimeout := 15 * time.Second
			if tc.creds == nil {
				joinTimeout = time.Second
			}
			err = RunAgent(ctx, AgentConfig{Coordinator: ln.Addr().String(), Token: "tok", TLS: mustTLS(t, p.job.Workers[0].ClientConfig),
				BindIP: "127.0.0.1", Log: zerolog.Nop(), Membership: jobtest.FastGossip(), JoinTimeout: joinTimeout,
				NewDataPlane: func(string) (DataPlane, error) { return fakeData{"127.0.0.1:1"}, nil }})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("worker against a fake coordinator: %v, want %q", err, tc.want)
			}
			if n := fake.calls.Load(); n != 0 {
				t.Fatalf("the fake coordinator received %d requests", n)
			}
		})
	}
}

// recordingProxy forwards TCP connections to target and keeps every byte
// it forwards, both ways.
type recordingProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	seen   bytes.Buffer
	wg     sync.WaitGroup
}

func newRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *recordingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(io.MultiWriter(dst, p), src)
			dst.Close()
			src.Close()
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}

func (p *recordingProxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen.Write(b)
}

func (p *recordingProxy) bytes() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.seen.Bytes())
}

// secretsIn names the job secrets found in captured bytes: the token and
// every key derived from it, as text and as raw bytes.
func secretsIn(captured []byte, token string) []string {
	cred, dp := cluster.ControlCredential(token), cluster.DataPlaneKey(token)
	rawCred, _ := hex.DecodeString(cred)
	rawDP, _ := hex.DecodeString(dp)
	var found []string
	for name, s := range map[string][]byte{"token": []byte(token), "control credential": []byte(cred),
		"control credential (raw)": rawCred, "data-plane key": []byte(dp), "data-plane key (raw)": rawDP,
		"gossip key": cluster.GossipKey(token)} {
		if bytes.Contains(captured, s) {
			found = append(found, name)
		}
	}
	return found
}

// A whole job's control-plane traffic, captured by a proxy between the
// workers and the coordinator, shows neither the job token nor a key
// derived from it under TLS. The same job in cleartext shows the control
// credential (so the capture does see the requests) but still not the
// token or the other planes' keys.
func TestTLSCaptureShowsNoSecrets(t *testing.T) {
	token, err := cluster.RandomToken()
	if err != nil {
		t.Fatal(err)
	}
	p := newTestPKI(t, 2)
	for _, secure := range []bool{true, false} {
		t.Run(fmt.Sprintf("tls=%v", secure), func(t *testing.T) {
			c := jobtest.NewCoordinator(t, 2, func(cfg *cluster.CoordinatorConfig) {
				cfg.Token = token
				if secure {
					cfg.TLS = mustTLS(t, p.job.Coordinator.ServerConfig)
				}
			})
			proxy := newRecordingProxy(t, c.Addr())
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan cluster.Result, 1)
			go func() { r, _ := c.Run(ctx); done <- r }()
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i := range 2 {
				var tlsCfg *tls.Config
				if secure {
					tlsCfg = mustTLS(t, p.job.Workers[i].ClientConfig)
				}
				wg.Go(func() {
					errs[i] = RunAgent(ctx, AgentConfig{Coordinator: proxy.ln.Addr().String(), Token: token, TLS: tlsCfg, Host: "h",
						BindIP: "127.0.0.1", Membership: jobtest.FastGossip(), Log: zerolog.Nop(), Runner: stepper(-1, 0, false),
						NewDataPlane: func(string) (DataPlane, error) { return fakeData{fmt.Sprintf("127.0.0.1:%d", 1000+i)}, nil }})
				})
			}
			wg.Wait()
			if r := <-done; r.Phase != cluster.PhaseSucceeded {
				t.Fatalf("job %s: %s", r.Phase, r.Reason)
			}
			for i, err := range errs {
				if err != nil {
					t.Fatalf("worker %d: %v", i, err)
				}
			}
			captured := proxy.bytes()
			found := secretsIn(captured, token)
			t.Logf("%d bytes captured; secrets in them: %v", len(captured), found)
			if secure && len(found) > 0 {
				t.Fatalf("TLS control plane: the capture shows %v", found)
			}
			if !secure && (len(found) != 1 || found[0] != "control credential") {
				t.Fatalf("cleartext control plane: the capture shows %v, want the control credential only", found)
			}
		})
	}
}
