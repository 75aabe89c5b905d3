package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/moetrain/moetrain/cluster"
	pb "github.com/moetrain/moetrain/cluster/proto"
)

// An agent host of TestControlPlaneScale is this test binary re-executed
// with scaleHostEnv set: it runs a share of the light agents, each with its
// own gRPC client connection (DialCoordinatorLoad, as a worker dials) and
// its own memberlist instance on a loopback port, and tells the test what
// each agent sees, one line per event on stdout:
//
//	SCALE UP                       the host is up, waiting for GO
//	SCALE R <i> <worker id> <ns>   agent i joined and opened its command stream
//	SCALE S <i> <ns>               agent i got its start command
//	SCALE G <i> <ns>               agent i's gossip join returned
//	SCALE F <i> <error>            agent i's gossip join failed
//	SCALE C <i> <ns>               agent i's view first had every member alive
//	SCALE D <i> <name> <ns>        agent i's view declared member name dead
//	SCALE L <i> <acked> <tried> <failed>
//	                               the last step agent i reported and had
//	                               acknowledged, the last it reported, and
//	                               how many reports were not acknowledged
//	SCALE STOPPED                  every reporter has stopped (after the L lines)
//	SCALE E <i> <error>            agent i failed
//
// (<ns>: unix nanoseconds; every process reads the same clock). It reads
// commands on stdin: GO (join), STOP (stop reporting, then the L lines);
// stdin's end ends the host without a goodbye (no gossip leave).
const (
	scaleHostEnv = "MOETRAIN_SCALE_AGENT_HOST" // "<first agent index>,<agents>,<world>"
	scaleAddrEnv = "MOETRAIN_SCALE_ADDR"       // the coordinator's control-plane address
	scaleLoadEnv = "MOETRAIN_SCALE_PPC"        // processes per core the agents' keepalives allow for
	// scaleNoGossipEnv set: the agents take no part in gossip (the control
	// plane's gRPC path alone; TestControlPlaneScale's MOETRAIN_SCALE_GOSSIP).
	scaleNoGossipEnv = "MOETRAIN_SCALE_NO_GOSSIP"
	scaleLinePref    = "SCALE "
)

// scaleReportEvery is how often every agent reports progress.
const scaleReportEvery = 500 * time.Millisecond

// scaleOut writes the host's event lines from any goroutine.
type scaleOut struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *scaleOut) line(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintf(o.w, scaleLinePref+format+"\n", args...)
	o.w.Flush()
}

// hostAgent is one light worker of an agent host.
type hostAgent struct {
	i         int
	out       *scaleOut
	member    atomic.Pointer[cluster.Membership]
	complete  bool         // the view had every member alive (the poller's own)
	lastSent  atomic.Int64 // the last step reported and acknowledged
	lastTried atomic.Int64 // the last step reported, acknowledged or not
	failed    atomic.Int64 // reports not acknowledged (each superseded by the next)
	stop      chan struct{}
	stopped   chan struct{} // closed by the reporter, or at once if none starts
	reporter  sync.Once
}

// TestScaleAgentHost is an agent host of TestControlPlaneScale; it does
// nothing when run directly.
func TestScaleAgentHost(t *testing.T) {
	spec := os.Getenv(scaleHostEnv)
	if spec == "" {
		t.Skip("helper process of TestControlPlaneScale")
	}
	var first, count, world int
	if _, err := fmt.Sscanf(spec, "%d,%d,%d", &first, &count, &world); err != nil || count < 1 || world < count {
		t.Fatalf("%s=%q: want <first>,<count>,<world>", scaleHostEnv, spec)
	}
	ppc, _ := strconv.ParseFloat(os.Getenv(scaleLoadEnv), 64)
	addr := os.Getenv(scaleAddrEnv)
	out := &scaleOut{w: bufio.NewWriter(os.Stdout)}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmds := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- strings.TrimSpace(sc.Text())
		}
		close(cmds) // the test ended or killed its end of the pipe
	}()
	out.line("UP")
	if c, ok := <-cmds; !ok || c != "GO" {
		return
	}
	if f := os.Getenv("MOETRAIN_SCALE_PROFILE"); f != "" && first == 0 {
		// Diagnosis: the first host's CPU profile of its first 30 s.
		stop, err := profileCPU(f, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
	}
	agents := make([]*hostAgent, count)
	for k := range agents {
		a := &hostAgent{i: first + k, out: out, stop: make(chan struct{}), stopped: make(chan struct{})}
		agents[k] = a
		go a.run(ctx, addr, world, ppc, os.Getenv(scaleNoGossipEnv) == "")
	}
	// The views: every 50 ms, which agents first see all world+1 members
	// (the agents and the coordinator) alive.
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, a := range agents {
				if m := a.member.Load(); m != nil && !a.complete && m.AliveMembers() >= world+1 {
					a.complete = true
					out.line("C %d %d", a.i, time.Now().UnixNano())
				}
			}
		}
	}()
	stopped := false
	for c := range cmds {
		if c != "STOP" || stopped {
			continue
		}
		stopped = true
		for _, a := range agents {
			close(a.stop)
			a.reporter.Do(func() { close(a.stopped) }) // never started: nothing to wait for
		}
		for _, a := range agents {
			select {
			case <-a.stopped:
			case <-ctx.Done():
				t.Fatal("reporters did not stop")
			}
			out.line("L %d %d %d %d", a.i, a.lastSent.Load(), a.lastTried.Load(), a.failed.Load())
		}
		out.line("STOPPED")
	}
	// No goodbye: the memberlist instances and connections die with the
	// process.
}

// profileCPU writes a CPU profile of the next d (or until stop) to file.
func profileCPU(file string, d time.Duration) (stop func(), err error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	stop = func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }
	time.AfterFunc(d, stop)
	return stop, nil
}

// run joins as a worker does (runMembership): the Join RPC, the command
// stream, then the gossip join beside it through the join response's
// seeds, with the job's gossip timings (JobMembership of the world the
// coordinator names). Agents' gossip timings are those of world hosts;
// only the keepalive allows for the shared machine (ppc).
func (a *hostAgent) run(ctx context.Context, addr string, world int, ppc float64, gossip bool) {
	fail := func(err error) {
		if ctx.Err() == nil {
			a.out.line("E %d %s", a.i, strings.ReplaceAll(err.Error(), "\n", " "))
		}
	}
	conn, _, err := cluster.DialCoordinatorLoad(addr, ppc, nil)
	if err != nil {
		fail(err)
		return
	}
	client := pb.NewCoordinatorClient(conn)
	cred := cluster.ControlCredential(scaleToken)
	jctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	var hdr metadata.MD
	resp, err := client.Join(jctx, &pb.JoinRequest{Token: cred, Host: "h" + strconv.Itoa(a.i),
		DataAddr: fmt.Sprintf("127.0.0.1:%d", 10000+a.i), Cores: 1, Pid: int32(os.Getpid())}, grpc.WaitForReady(true), grpc.Header(&hdr))
	cancel()
	if err != nil {
		fail(fmt.Errorf("join: %w", err))
		return
	}
	id := resp.WorkerId
	if w := joinWorld(hdr); w != world {
		fail(fmt.Errorf("the join response names a world of %d, the test %d", w, world))
		return
	}
	var member *cluster.Membership
	if gossip {
		meta, _ := json.Marshal(map[string]any{"id": id, "host": "h" + strconv.Itoa(a.i)})
		member, err = cluster.StartMembershipWatch(id, meta, scaleToken, cluster.JobMembership(scaleGossip(), world, 0), zerolog.Nop(), cluster.MemberWatch{
			Dead: func(name string) { a.out.line("D %d %s %d", a.i, name, time.Now().UnixNano()) },
		})
		if err != nil {
			fail(err)
			return
		}
		a.member.Store(member)
	}
	stream, err := client.Commands(ctx, &pb.CommandsRequest{Token: cred, WorkerId: id})
	if err != nil {
		fail(fmt.Errorf("command stream: %w", err))
		return
	}
	a.out.line("R %d %s %d", a.i, id, time.Now().UnixNano())
	go func() {
		if member == nil {
			return
		}
		if err := joinGossip(ctx, member, gossipSeeds(resp.CoordinatorGossip, hdr), 2*time.Minute); err != nil {
			if ctx.Err() == nil {
				a.out.line("F %d %s", a.i, strings.ReplaceAll(err.Error(), "\n", " "))
			}
			return
		}
		a.out.line("G %d %d", a.i, time.Now().UnixNano())
	}()
	for {
		c, err := stream.Recv()
		if err != nil {
			return // the job ended (after the kill): gossip goes on
		}
		if s, ok := c.Kind.(*pb.Command_Start); ok {
			a.reporter.Do(func() {
				a.out.line("S %d %d", a.i, time.Now().UnixNano())
				go a.report(ctx, client, id, int(s.Start.Rank), cred)
			})
		}
	}
}

// report sends a progress report every scaleReportEvery, each after the
// previous one was answered, until STOP. A report not acknowledged within
// the RPC timeout is counted and superseded by the next, as a worker's
// (agent.sendProgress).
func (a *hostAgent) report(ctx context.Context, client pb.CoordinatorClient, id string, rank int, cred string) {
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
		a.lastTried.Store(step)
		rctx, cancel := context.WithTimeout(ctx, cluster.RPCTimeout)
		_, err := client.ReportProgress(rctx, &pb.ProgressReport{Token: cred, WorkerId: id, Rank: int32(rank),
			Step: step, Loss: 1, TokensPerSec: 1})
		cancel()
		if err != nil {
			a.failed.Add(1)
			continue
		}
		a.lastSent.Store(step)
	}
}
