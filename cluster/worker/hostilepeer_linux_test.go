//go:build linux

package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/cluster/launch"
	"github.com/moetrain/moetrain/collective"
)

// A whole job, with worker processes on real sockets, where the worker of
// rank 0 is hostile: it holds the job's token (so it passes every
// authentication) and then sends its peer (a) a frame whose length field
// is 2^32−1, (b) 10,000 frames nobody waits for, or (c) NaN or negative
// expert row counts. The receiving rank (1) fails its step with an error
// naming rank 0, the job ends with that error, nothing panics, and the
// receiving process's peak resident memory stays within twice what the
// same rank uses in a job without the hostile peer (docs/control-plane.md#hostile-peers).

// hostileModeEnv selects what TestHelperPeerProcess runs as: "honest" or
// one of the attacks; unset, it is skipped.
const hostileModeEnv = "MOETRAIN_TEST_PEER_MODE"

// hostileCoordEnv is the coordinator address of the helper process.
const hostileCoordEnv = "MOETRAIN_TEST_PEER_COORD"

// hostileJob is an expert-parallel job (2 ranks, one expert-parallel
// group, so that row counts travel) of steps steps.
func hostileJob(steps int) cluster.CoordinatorConfig {
	job := jobtest.TinyJob()
	job.Mesh.DP, job.Mesh.SP, job.Mesh.TP, job.Mesh.EP = 2, 1, 1, 2
	job.Train.Steps = steps
	b, err := cluster.JobJSON(job)
	if err != nil {
		panic(err)
	}
	return cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Workers: 2, TotalSteps: steps, Plan: cluster.PlanRequestFor(job),
		JobConfigJSON: b, DrainTimeout: 10 * time.Second, Log: zerolog.Nop()}
}

// TestHelperPeerProcess is the worker process of TestHostilePeerJob.
func TestHelperPeerProcess(t *testing.T) {
	mode := os.Getenv(hostileModeEnv)
	if mode == "" {
		t.Skip("the worker process of TestHostilePeerJob")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := AgentConfig{Coordinator: os.Getenv(hostileCoordEnv), Token: os.Getenv(cluster.TokenEnv), Host: "h", BindIP: "127.0.0.1",
		Membership: cluster.DefaultMembershipConfig(), JoinTimeout: 30 * time.Second, ProcsPerCore: launch.ProcsPerCore(2),
		Log: zerolog.New(os.Stderr).Level(zerolog.WarnLevel)}
	switch mode {
	case "honest":
	case "length", "flood":
		cfg.NewDataPlane = newCapturePlane
		cfg.Runner = rawAttack(mode)
	case "nan", "negative":
		bad := float32(math.NaN())
		if mode == "negative" {
			bad = -3
		}
		plane := &countCorrupter{bad: bad}
		cfg.NewDataPlane = func(ip string) (DataPlane, error) {
			dp, err := NewTCPDataPlane(ip)
			plane.DataPlane = dp
			return plane, err
		}
		cfg.Runner = func(ctx context.Context, spec StartSpec) error {
			plane.countBytes = 4 * spec.Job.Model.Experts / spec.Plan.Mesh.EP
			if err := RunMesh(ctx, spec); err != nil {
				<-ctx.Done() // a hostile peer reports nothing
				return ctx.Err()
			}
			return nil
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", mode)
		os.Exit(2)
	}
	err := RunAgent(ctx, cfg)
	// The process's own high-water mark: its rusage counts the parent's
	// memory too (a child started with vfork inherits the parent's peak
	// at exec).
	fmt.Fprintf(os.Stderr, "%s %d\n", vmHWMPrefix, vmHWM())
	var ab *AbortedError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ab):
		os.Exit(ExitAborted)
	}
	fmt.Fprintln(os.Stderr, "worker:", err)
	os.Exit(2)
}

// vmHWMPrefix starts the helper's line that reports its VmHWM.
const vmHWMPrefix = "vmhwm-bytes"

// vmHWM is this process's peak resident set size in bytes
// (/proc/self/status VmHWM), 0 if unknown.
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kib int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib); err == nil {
				return kib * 1024
			}
		}
	}
	return 0
}

// capturePlane is a TCP data plane that keeps the connections it accepts
// (from the higher ranks), so that its owner can write raw bytes to them.
type capturePlane struct {
	ln       *net.TCPListener
	mu       sync.Mutex
	accepted []*net.TCPConn
}

func newCapturePlane(ip string) (DataPlane, error) {
	ln, err := collective.Listen(net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, err
	}
	return &capturePlane{ln: ln.(*net.TCPListener)}, nil
}

// captureListener is the listener DialMesh accepts on.
type captureListener struct {
	*net.TCPListener
	p *capturePlane
}

func (l captureListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	l.p.mu.Lock()
	l.p.accepted = append(l.p.accepted, c)
	l.p.mu.Unlock()
	return c, nil
}

func (p *capturePlane) Addr() string { return p.ln.Addr().String() }
func (p *capturePlane) Close() error { return p.ln.Close() }
func (p *capturePlane) Connect(ctx context.Context, rank int, addrs []string, token string, lim DataPlaneLimits) (collective.Transport, error) {
	return collective.DialMesh(ctx, captureListener{p.ln, p}, collective.TCPConfig{Rank: rank, Addrs: addrs, Token: cluster.DataPlaneKey(token),
		MaxPayload: lim.MaxPayload, MaxBuffered: lim.MaxBuffered})
}

// rawAttack connects to the mesh as a rank of the job and then, instead of
// training, attacks every rank that connected to it: "length" writes one
// frame header whose length field is 2^32−1; "flood" sends 10,000 frames
// of a group no rank uses, together more than the receiver's MaxBuffered.
func rawAttack(mode string) Runner {
	return func(ctx context.Context, spec StartSpec) error {
		lim := JobDataPlaneLimits(spec.Job, spec.Plan.Mesh, collective.Config{Timeout: CollectiveTimeout})
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tr, err := spec.Data.Connect(dctx, spec.Rank, spec.Plan.Addrs(), spec.Token, lim)
		cancel()
		if err != nil {
			return err
		}
		defer tr.Close()
		p := spec.Data.(*capturePlane)
		p.mu.Lock()
		victims := append([]*net.TCPConn(nil), p.accepted...)
		p.mu.Unlock()
		switch mode {
		case "length":
			hb := make([]byte, collective.HeaderSize)
			collective.EncodeHeader(hb, collective.Header{Op: collective.OpSendRecv, Tag: collective.Tag{Group: 1 << 40, Seq: 1}, Count: 1, Len: 1<<32 - 1})
			for _, c := range victims {
				_, _ = c.Write(hb)
			}
		case "flood":
			payload := make([]byte, lim.MaxBuffered/10000+1)
			sent := 0
			for i := range 10000 {
				h := collective.Header{Op: collective.OpSendRecv, Tag: collective.Tag{Group: 1 << 40, Seq: uint64(i + 1)}, Count: 1}
				if tr.Send(ctx, spec.Rank+1, h, payload) != nil {
					break
				}
				sent++
			}
			fmt.Fprintf(os.Stderr, "flood: %d frames of %d bytes sent\n", sent, len(payload))
		}
		<-ctx.Done() // a hostile peer reports nothing
		return ctx.Err()
	}
}

// countCorrupter is a data plane whose transport replaces the payload of
// the first expert row-count frame it sends (an all-to-all-v of
// countBytes) with bad counts, and at its next send (the rows that follow
// the counts, once the peer's counts arrived) drops the link instead. A
// peer that stays connected gets the same error, but only at the
// collective timeout: the receiving rank skips the exchanges that follow
// bad counts, and the next collective its step reaches waits for a sender
// blocked in one of those (docs/control-plane.md#hostile-peers).
type countCorrupter struct {
	DataPlane
	bad        float32
	countBytes int
	corrupted  atomic.Bool
}

func (c *countCorrupter) Connect(ctx context.Context, rank int, addrs []string, token string, lim DataPlaneLimits) (collective.Transport, error) {
	t, err := c.DataPlane.Connect(ctx, rank, addrs, token, lim)
	if err != nil {
		return nil, err
	}
	return corruptingTransport{t, c}, nil
}

type corruptingTransport struct {
	collective.Transport
	c *countCorrupter
}

func (t corruptingTransport) Send(ctx context.Context, peer int, h collective.Header, parts ...[]byte) error {
	n := partsLen(parts)
	if t.c.corrupted.Load() {
		t.Transport.Close()
		return errors.New("hostile peer: link dropped")
	}
	if h.Op == collective.OpAllToAllV && n == t.c.countBytes {
		t.c.corrupted.Store(true)
		bad := make([]byte, n)
		for i := 0; i < n; i += 4 {
			bits := math.Float32bits(t.c.bad)
			bad[i], bad[i+1], bad[i+2], bad[i+3] = byte(bits), byte(bits>>8), byte(bits>>16), byte(bits>>24)
		}
		parts = [][]byte{bad}
	}
	return t.Transport.Send(ctx, peer, h, parts...)
}

// peerProc is one worker process of a hostile-peer job.
type peerProc struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	done   chan struct{}
	maxRSS int64 // VmHWM in bytes, once done
}

func startPeer(t *testing.T, mode, addr, token string) *peerProc {
	t.Helper()
	p := &peerProc{done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^TestHelperPeerProcess$")
	p.cmd.Env = append(os.Environ(), hostileModeEnv+"="+mode, hostileCoordEnv+"="+addr, cluster.TokenEnv+"="+token)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		for _, line := range strings.Split(p.out.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, vmHWMPrefix+" "); ok {
				_, _ = fmt.Sscanf(rest, "%d", &p.maxRSS)
			}
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			t.Errorf("worker process %s did not exit; killed. Output:\n%s", mode, p.out.String())
		}
	})
	return p
}

// runHostileJob runs the job with a rank-0 worker of mode and an honest
// rank 1, and returns the result and rank 1's process.
func runHostileJob(t *testing.T, mode string, steps int) (cluster.Result, *peerProc) {
	t.Helper()
	token, err := cluster.RandomToken()
	if err != nil {
		t.Fatal(err)
	}
	cfg := hostileJob(steps)
	cfg.Token, cfg.JobID = token, mode
	c, err := cluster.NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan cluster.Result, 1)
	go func() { r, _ := c.Run(ctx); done <- r }()
	first := startPeer(t, mode, c.Addr(), token)
	for { // ranks follow join order: the first to join is rank 0
		s, err := cluster.QueryStatus(ctx, c.Addr(), token)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Workers) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	victim := startPeer(t, "honest", c.Addr(), token)
	res := <-done
	for _, p := range []*peerProc{first, victim} {
		select {
		case <-p.done:
		case <-ctx.Done():
			t.Fatalf("worker processes still running after the job ended")
		}
	}
	if strings.Contains(victim.out.String(), "panic") || strings.Contains(first.out.String(), "panic") {
		t.Fatalf("a worker panicked:\n%s\n%s", first.out.String(), victim.out.String())
	}
	return res, victim
}

func TestHostilePeerJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	base, victim := runHostileJob(t, "honest", 10)
	if base.Phase != cluster.PhaseSucceeded {
		t.Fatalf("job without a hostile peer: %s: %s", base.Phase, base.Reason)
	}
	normal := victim.maxRSS
	if normal <= 0 {
		t.Fatalf("rank 1 reported no peak memory:\n%s", victim.out.String())
	}
	t.Logf("rank 1 without a hostile peer: peak RSS %.1f MiB", float64(normal)/(1<<20))
	for _, tc := range []struct {
		mode string
		want []string // in the job's error, with "(rank 1"
	}{
		{"length", []string{"rank 0", "4294967295"}},
		{"flood", []string{"rank 0"}},
		{"nan", []string{"member 0", "NaN", "not a number"}},
		{"negative", []string{"member 0", "-3", "negative"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			res, victim := runHostileJob(t, tc.mode, 10)
			t.Logf("job %s after %v: %s", res.Phase, res.Ended.Sub(res.Started).Round(time.Millisecond), res.Reason)
			if os.Getenv("DEBUG_PEER") != "" {
				t.Logf("victim output:\n%s", victim.out.String())
			}
			t.Logf("rank 1: exit %d, peak RSS %.1f MiB (%.2f× the job without a hostile peer)", victim.cmd.ProcessState.ExitCode(),
				float64(victim.maxRSS)/(1<<20), float64(victim.maxRSS)/float64(normal))
			if res.Phase != cluster.PhaseFailed || !strings.Contains(res.Reason, "(rank 1") {
				t.Fatalf("want the job failed by rank 1's error, got %s: %s", res.Phase, res.Reason)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.Reason, w) {
					t.Errorf("the job's error does not say %q", w)
				}
			}
			if code := victim.cmd.ProcessState.ExitCode(); code != ExitAborted {
				t.Errorf("rank 1 exited with %d, want %d (aborted)\n%s", code, ExitAborted, victim.out.String())
			}
			if victim.maxRSS > 2*normal {
				t.Errorf("rank 1's peak RSS %d bytes is more than twice its %d without a hostile peer", victim.maxRSS, normal)
			}
		})
	}
}
