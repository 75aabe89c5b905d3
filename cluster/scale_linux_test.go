package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/train"
)

// The control plane at scale (docs/planner.md#control-plane-scale): one
// coordinator process (this test binary re-executed, so its CPU and memory
// are its own) and n light agents in this process, each with its own
// memberlist instance on a loopback port and no training, joining as a
// worker does (agent.go): the Join RPC, the command stream, then the
// gossip join beside it through the seeds the coordinator hands out, with
// the job's gossip timings (JobMembership). They get planned and started,
// report progress every scaleReportEvery, one is killed (its gossip member
// shut down without a leave, its connection cut), and every survivor's own
// gossip view must declare it dead.

const scaleToken = "scale-token"

// scaleGossip is the gossip configuration the harness starts from, as
// launch and serve do (memberlist's LAN timings); coordinator and agents
// adapt it to the job with JobMembership.
func scaleGossip() MembershipConfig { return DefaultMembershipConfig() }

const scaleReportEvery = 500 * time.Millisecond

// detectWithin bounds the wait for every survivor to declare the killed
// agent dead (the acceptance is 5 s; the wait is longer so that a slower
// detection is measured, not only failed).
const detectWithin = 60 * time.Second

// TestScaleCoordinatorHelper is the coordinator process of
// TestControlPlaneScale; it does nothing when run directly.
func TestScaleCoordinatorHelper(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("MOETRAIN_SCALE_COORDINATOR"))
	if err != nil {
		t.Skip("helper process of TestControlPlaneScale")
	}
	job := train.DefaultJobConfig()
	job.Train.Steps = 1 << 30
	b, err := JobJSON(job)
	if err != nil {
		t.Fatal(err)
	}
	// Every agent lives in one process of a small machine, as starved as
	// n/2 worker processes per core: the coordinator gives a gossip death
	// and a stream open the time LivenessBound allows such workers (the
	// agents' gossip timings stay those of n hosts, JobMembership's).
	bound := LivenessBound(n, float64(n)/2)
	lg := zerolog.New(os.Stdout).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	c, err := NewCoordinator(CoordinatorConfig{Listen: "127.0.0.1:0", Token: scaleToken, JobID: "scale", Workers: n,
		TotalSteps: job.Train.Steps, Plan: PlanRequestFor(job), JobConfigJSON: b, DrainTimeout: 5 * time.Second,
		Membership: scaleGossip(), GossipConfirm: bound, StreamOpenTimeout: 2 * bound, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ADDR %s\n", c.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := c.Run(ctx)
	// Stay up (the parent kills this process), so that the parent's status
	// queries still reach the gRPC server's process and tell it why.
	fmt.Printf("RUN-ENDED phase %s: %.300s (err %v)\n", res.Status.Phase, res.Status.Reason, err)
	<-ctx.Done()
}

// procUsage reads a process's CPU seconds (user+system) and resident
// memory from /proc.
func procUsage(pid int) (cpu float64, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 on
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return (ut + st) / 100, pages * int64(os.Getpagesize()), nil // USER_HZ is 100 on Linux
}

// scaleAgent is one light worker.
type scaleAgent struct {
	id       string
	cancel   context.CancelFunc // ends this agent's RPCs and command stream
	client   pb.CoordinatorClient
	member   *Membership
	started  atomic.Int64 // unix nanoseconds of the start command; 0 before
	gossiped atomic.Int64 // unix nanoseconds of the gossip join; 0 before
	lastSent atomic.Int64 // the last step reported and acknowledged
	deadAt   sync.Map     // member name → time this agent's view declared it dead

	stop    chan struct{} // closed: stop reporting
	stopped chan struct{} // closed by the reporter when it has stopped
}

// run joins over conn, a client connection the agents share (HTTP/2
// streams of one connection: a real worker has its own, but a thousand in
// one process on a small machine starve each other's keepalive answers),
// in the order of a worker (runMembership): Join, command stream, then the
// gossip join beside the stream.
func (a *scaleAgent) run(ctx context.Context, conn *grpc.ClientConn, i int, ready chan<- *scaleAgent, errs chan<- error) {
	a.client = pb.NewCoordinatorClient(conn)
	cred := ControlCredential(scaleToken)
	jctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	var hdr metadata.MD
	resp, err := a.client.Join(jctx, &pb.JoinRequest{Token: cred, Host: "h", DataAddr: fmt.Sprintf("127.0.0.1:%d", 10000+i),
		Cores: 1, Pid: int32(os.Getpid())}, grpc.WaitForReady(true), grpc.Header(&hdr))
	cancel()
	if err != nil {
		errs <- fmt.Errorf("agent %d: join: %w", i, err)
		return
	}
	a.id = resp.WorkerId
	meta, _ := json.Marshal(map[string]any{"id": a.id, "host": "h"})
	a.member, err = StartMembershipWatch(a.id, meta, scaleToken, JobMembership(scaleGossip(), joinWorld(hdr), 0), zerolog.Nop(), MemberWatch{
		Dead: func(name string) { a.deadAt.LoadOrStore(name, time.Now()) },
	})
	if err != nil {
		errs <- fmt.Errorf("agent %s: gossip: %w", a.id, err)
		return
	}
	stream, err := a.client.Commands(ctx, &pb.CommandsRequest{Token: cred, WorkerId: a.id})
	if err != nil {
		errs <- fmt.Errorf("agent %s: command stream: %w", a.id, err)
		return
	}
	ready <- a
	go func() {
		// As long as the coordinator waits for a stream (a starved
		// process, see TestScaleCoordinatorHelper).
		if err := joinGossip(ctx, a.member, gossipSeeds(resp.CoordinatorGossip, hdr), 2*time.Minute); err != nil {
			if ctx.Err() == nil {
				errs <- fmt.Errorf("agent %s: %w", a.id, err)
			}
			return
		}
		a.gossiped.Store(time.Now().UnixNano())
	}()
	for {
		c, err := stream.Recv()
		if err != nil {
			return // cut, aborted or stopped: the test looks at what was seen
		}
		if s, ok := c.Kind.(*pb.Command_Start); ok && a.started.Load() == 0 {
			a.started.Store(time.Now().UnixNano())
			go a.report(ctx, int(s.Start.Rank), cred)
		}
	}
}

// report sends a progress report every scaleReportEvery until ctx ends or
// the coordinator stops acknowledging.
func (a *scaleAgent) report(ctx context.Context, rank int, cred string) {
	defer close(a.stopped)
	t := time.NewTicker(scaleReportEvery)
	defer t.Stop()
	for step := int64(1); ; step++ {
		select {
		case <-ctx.Done():
			return
		case <-a.stop:
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := a.client.ReportProgress(rctx, &pb.ProgressReport{Token: cred, WorkerId: a.id, Rank: int32(rank),
			Step: step, Loss: 1, TokensPerSec: 1})
		cancel()
		if err != nil {
			return
		}
		a.lastSent.Store(step)
	}
}

type scaleResult struct {
	n                    int
	readyAll             time.Duration // every agent joined (RPC) with its command stream open
	startAll             time.Duration // every agent has its start command (planned)
	gossipAll            time.Duration // every agent's gossip join returned
	convergedAll         time.Duration // every agent's view has all n+1 members alive
	detectAll            time.Duration
	detected             int
	falseDeaths          int // (agent, live member) pairs where the agent's view had the member dead
	cpuCores, rssMiB     float64
	checked, lostUpdates int
}

func runScale(t *testing.T, n int) scaleResult {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestScaleCoordinatorHelper$")
	cmd.Env = append(os.Environ(), "MOETRAIN_SCALE_COORDINATOR="+strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // one stream: a crash's trace lands in the log too
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	var addr string
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatal("coordinator process printed no address")
	}
	// On stderr, not t.Logf: what the coordinator says after a failure
	// of the test (why the job ended) is kept.
	go func() {
		for sc.Scan() {
			fmt.Fprintf(os.Stderr, "n=%d coordinator: %s\n", n, sc.Text())
		}
	}()

	t0 := time.Now()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ready, errs := make(chan *scaleAgent, n), make(chan error, n)
	agents := make([]*scaleAgent, n)
	for i := range agents {
		agents[i] = &scaleAgent{stop: make(chan struct{}), stopped: make(chan struct{})}
		actx, acancel := context.WithCancel(ctx)
		agents[i].cancel = acancel
		go agents[i].run(actx, conn, i, ready, errs)
	}
	defer func() {
		for _, a := range agents {
			a.cancel()
		}
	}()
	for i := 0; i < n; i++ {
		select {
		case <-ready:
		case err := <-errs:
			time.Sleep(time.Second) // the coordinator's last words
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatalf("%d of %d agents ready before the deadline", i, n)
		}
	}
	defer func() {
		for _, a := range agents {
			a.member.ml.Shutdown()
		}
	}()
	// Joined and planned: every agent has its start command.
	var res scaleResult
	res.n, res.readyAll = n, time.Since(t0)
	res.startAll = waitAll(ctx, t, "started", errs, func() (int64, bool) {
		last := int64(0)
		for _, a := range agents {
			s := a.started.Load()
			if s == 0 {
				return 0, false
			}
			last = max(last, s)
		}
		return last, true
	}).Sub(t0)
	// Gossip: every agent joined, then every agent's view has every
	// member alive (a survivor can only declare dead a member it knows).
	res.gossipAll = waitAll(ctx, t, "joined gossip", errs, func() (int64, bool) {
		last := int64(0)
		for _, a := range agents {
			g := a.gossiped.Load()
			if g == 0 {
				return 0, false
			}
			last = max(last, g)
		}
		return last, true
	}).Sub(t0)
	res.convergedAll = waitAll(ctx, t, "saw every member alive", errs, func() (int64, bool) {
		for _, a := range agents {
			if a.member.AliveMembers() < n+1 {
				return 0, false
			}
		}
		return time.Now().UnixNano(), true
	}).Sub(t0)
	// Steady progress reporting: the coordinator process's CPU and memory
	// over a window of several report periods.
	time.Sleep(2 * scaleReportEvery)
	c0, _, err := procUsage(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	w0 := time.Now()
	time.Sleep(6 * scaleReportEvery)
	c1, rss, err := procUsage(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	res.cpuCores, res.rssMiB = (c1-c0)/time.Since(w0).Seconds(), float64(rss)/(1<<20)

	// No lost updates: stop every reporter, then the coordinator's step
	// of each worker must be the last one that worker had acknowledged.
	acked := map[string]int64{}
	for _, a := range agents {
		close(a.stop)
	}
	for _, a := range agents {
		select {
		case <-a.stopped:
		case <-ctx.Done():
			t.Fatal("reporters did not stop")
		}
		acked[a.id] = a.lastSent.Load()
	}
	st, err := QueryStatus(ctx, addr, scaleToken)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Workers {
		if want, ok := acked[w.Id]; ok {
			res.checked++
			if w.Step != want {
				res.lostUpdates++
			}
		}
	}

	// Kill one agent: its gossip member stops answering without a leave
	// and its command stream is cut.
	victim := agents[n/2]
	tk := time.Now()
	victim.member.ml.Shutdown()
	victim.cancel()
	var detect []time.Duration
	for deadline := time.Now().Add(detectWithin); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		detect = detect[:0]
		for _, a := range agents {
			if a == victim {
				continue
			}
			if v, ok := a.deadAt.Load(victim.id); ok {
				detect = append(detect, v.(time.Time).Sub(tk))
			}
		}
		if len(detect) == n-1 {
			break
		}
	}
	res.detected = len(detect)
	if len(detect) > 0 {
		res.detectAll = slices.Max(detect)
	}
	// False deaths: live members some agent's view declared dead at some
	// point (refuted since, or the coordinator would have acted on them).
	for _, a := range agents {
		a.deadAt.Range(func(k, _ any) bool {
			if k.(string) != victim.id {
				res.falseDeaths++
			}
			return true
		})
	}
	return res
}

// waitAll polls done (every 50 ms, up to 2 minutes) until it reports
// true, and returns the time it gives (unix nanoseconds); an agent's error
// fails the test.
func waitAll(ctx context.Context, t *testing.T, what string, errs <-chan error, done func() (int64, bool)) time.Time {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if at, ok := done(); ok {
			return time.Unix(0, at)
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatalf("not every agent %s before the test's deadline", what)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every agent %s within 2 minutes", what)
		}
	}
}

// TestControlPlaneScale runs the agent counts listed in MOETRAIN_SCALE
// (e.g. "10,100,1000"; minutes of a loaded machine, so not by default) and
// logs the figures; it fails when an agent is not started, an update is
// lost beyond newest-wins, or a survivor never sees the death.
//
//	MOETRAIN_SCALE=10,100,1000 go test ./cluster -run TestControlPlaneScale -v -timeout 30m
func TestControlPlaneScale(t *testing.T) {
	spec := os.Getenv("MOETRAIN_SCALE")
	if spec == "" {
		t.Skip("set MOETRAIN_SCALE to the agent counts, e.g. 10,100,1000")
	}
	var sizes []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 || n > 5000 {
			t.Fatalf("MOETRAIN_SCALE=%q: want agent counts in [2, 5000] separated by commas", spec)
		}
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		r := runScale(t, n)
		t.Logf("n=%d: all joined (RPC, command stream) in %v, all planned and started in %v, all joined gossip in %v, every view complete in %v; "+
			"coordinator %.2f cores, %.0f MiB RSS while %d agents report every %v; "+
			"%d/%d survivors saw the killed worker dead, the last after %v (false deaths in agents' views: %d); %d of %d workers' progress differs from the last they sent",
			n, r.readyAll.Round(time.Millisecond), r.startAll.Round(time.Millisecond), r.gossipAll.Round(time.Millisecond),
			r.convergedAll.Round(time.Millisecond), r.cpuCores, r.rssMiB, n, scaleReportEvery,
			r.detected, n-1, r.detectAll.Round(time.Millisecond), r.falseDeaths, r.lostUpdates, r.checked)
		if r.detected != n-1 {
			t.Errorf("n=%d: only %d of %d survivors declared the killed worker dead within %v", n, r.detected, n-1, detectWithin)
		}
		if r.lostUpdates > 0 || r.checked != n {
			t.Errorf("n=%d: %d lost progress updates over %d workers checked", n, r.lostUpdates, r.checked)
		}
	}
}
