package worker

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cluster"
	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/train"
)

// DataPlane is a worker's collective endpoint: bound before the worker knows
// its rank (its address goes into the join request), connected to every
// other rank once the plan arrives.
type DataPlane interface {
	// Addr is the address other ranks dial, host:port.
	Addr() string
	// Connect builds the transport of the job's world; token is the job
	// token, from which the plane derives its own key (DataPlaneKey); lim
	// bounds what a peer can make this rank hold.
	Connect(ctx context.Context, rank int, addrs []string, token string, lim DataPlaneLimits) (collective.Transport, error)
	// Close releases the listener.
	Close() error
}

// ProgressUpdate is what a runner reports after a step.
type ProgressUpdate struct {
	Step         int
	Loss         float64 // mean over the data-parallel group
	TokensPerSec float64 // this rank
	Tokens       int64   // this rank, so far
	HasVal       bool
	ValLoss      float64
	// Phases are this rank's cumulative seconds per part of its loop, Load
	// the expert load of Step (nil: not known); for the coordinator's
	// metrics (docs/metrics.md).
	Phases metrics.Phases
	Load   []metrics.LayerLoad
}

// StartSpec is everything a runner gets from a start command.
type StartSpec struct {
	WorkerID string
	Rank     int
	Plan     cluster.Plan
	Job      train.JobConfig
	Token    string
	Threads  int // tensor thread budget; 0 = the job's train.threads
	Data     DataPlane
	Log      zerolog.Logger
	// Report sends progress to the coordinator; it may drop updates to save
	// traffic, never the last one. Safe to call from the runner goroutine.
	Report func(ProgressUpdate)
	// Checkpoint says where to save and what to resume from (zero: neither).
	Checkpoint cluster.CheckpointSpec
	// Generation counts the job's starts (0 first, +1 per recovery): the
	// data plane of one generation refuses the peers of another
	// (DataPlaneToken).
	Generation int
	// ReportShard tells the coordinator this rank's shard of checkpoint
	// step is written (werr == nil; info describes it) or failed. It blocks
	// until the coordinator acknowledged it (bounded); safe for concurrent
	// use.
	ReportShard func(step int, info checkpoint.ShardInfo, werr error) error
}

// Runner runs one rank of a job until it completes, fails, or ctx is
// cancelled (abort/stop), returning promptly in that case.
type Runner func(ctx context.Context, spec StartSpec) error

// AgentConfig configures a worker agent.
type AgentConfig struct {
	Coordinator string // control-plane address host:port
	Token       string
	Host        string // reported host name; "" = os.Hostname
	Cores       int    // cores this worker may use; 0 = GOMAXPROCS
	// TLS is the client side of mutual TLS with the coordinator
	// (pki.Files.ClientConfig); nil = cleartext.
	TLS *tls.Config
	// BindIP is the IP for the data plane and gossip; "" = the local IP that
	// routes to the coordinator.
	BindIP string
	// JoinTimeout bounds retries while the coordinator is not reachable yet.
	JoinTimeout time.Duration
	Membership  cluster.MembershipConfig
	Log         zerolog.Logger
	// Runner runs the job; nil = RunMesh.
	Runner Runner
	// NewDataPlane binds the data plane on ip; nil = TCP with TCPCongestion.
	NewDataPlane func(ip string) (DataPlane, error)
	// TCPCongestion is the TCP data plane's congestion control
	// (collective.TCPConfig.Congestion's syntax; "" = its default).
	TCPCongestion string
	// ProcsPerCore is how many worker processes share a core on this host
	// (0 = not known, taken as 1): it scales the gRPC keepalive timeout and
	// the gossip timings (LivenessBound, JobMembership).
	ProcsPerCore float64

	// beforeGossipJoin, if set, runs on the gossip join's goroutine before
	// it contacts any member (tests: a gossip join that takes its time).
	beforeGossipJoin func()
}

// ExitAborted is the exit status of a worker process (`worker --join`,
// `coordinator worker-process`) whose job the coordinator aborted: the
// failure was elsewhere, not in this worker.
const ExitAborted = 3

// AbortedError is returned by RunAgent when the coordinator aborted the job.
type AbortedError struct{ Reason string }

func (e *AbortedError) Error() string { return "job aborted by the coordinator: " + e.Reason }

// RefusedError is returned by RunAgent when the coordinator refused to admit
// this worker (wrong token, job already running) or TLS with it cannot
// work (either side's certificate is not the job's).
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return e.Msg }

// localIPFor returns the local IP used to reach addr.
func localIPFor(addr string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// RunAgent joins the coordinator and runs what it is told until the job ends.
// It returns nil after a stop (job complete or stopped), an *AbortedError
// after an abort, a *RefusedError when not admitted, or another error when
// the coordinator is lost (and, if the start command gave a rejoin timeout,
// does not take the worker back within it) or ctx is cancelled. A Rejoin
// command (recovery) makes it join again, as a new worker.
func RunAgent(ctx context.Context, cfg AgentConfig) error {
	lg := cfg.Log
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	if cfg.Cores <= 0 {
		cfg.Cores = runtime.GOMAXPROCS(0)
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = 30 * time.Second
	}
	if cfg.Runner == nil {
		cfg.Runner = RunMesh
	}
	congestion := "" // the TCP data plane's, for the log; "" with another data plane
	if cfg.NewDataPlane == nil {
		cc := cfg.TCPCongestion
		cfg.NewDataPlane = func(ip string) (DataPlane, error) { return NewTCPDataPlaneCongestion(ip, cc) }
		congestion = collective.CongestionChoice(cc)
	}
	ip := cfg.BindIP
	if ip == "" {
		var err error
		if ip, err = localIPFor(cfg.Coordinator); err != nil {
			return fmt.Errorf("find the local address that reaches coordinator %s: %w", cfg.Coordinator, err)
		}
	}
	dp, err := cfg.NewDataPlane(ip)
	if err != nil {
		return fmt.Errorf("data plane on %s: %w", ip, err)
	}
	defer dp.Close()
	conn, refusal, err := cluster.DialCoordinatorLoad(cfg.Coordinator, cfg.ProcsPerCore, cfg.TLS)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewCoordinatorClient(conn)
	// Each pass is one membership of the job: join, follow the commands.
	// A recovery (Rejoin) or a lost coordinator that may come back (the
	// start command's rejoin timeout) starts another pass on the same data
	// plane listener; anything else ends the worker.
	for {
		err := runMembership(ctx, cfg, client, dp, ip, congestion, refusal)
		var rj *rejoinError
		if !errors.As(err, &rj) {
			return err
		}
		lg.Warn().Str("why", rj.why).Dur("within", rj.within).Msg("joining the job again")
		cfg.JoinTimeout = rj.within
	}
}

// rejoinError ends one membership: the worker joins again within within.
type rejoinError struct {
	why    string
	within time.Duration
}

func (e *rejoinError) Error() string { return "rejoin: " + e.why }

// runMembership joins once and serves until that membership ends.
func runMembership(ctx context.Context, cfg AgentConfig, client pb.CoordinatorClient, dp DataPlane, ip, congestion string, refusal *cluster.TLSRefusal) error {
	lg := cfg.Log
	cred := cluster.ControlCredential(cfg.Token)
	resp, hdr, err := join(ctx, client, cfg, cred, dp.Addr(), refusal)
	if err != nil {
		return err
	}
	a := &agent{cfg: cfg, cred: cred, client: client, id: resp.WorkerId, dp: dp,
		log: lg.With().Str("worker", resp.WorkerId).Logger()}
	ev := a.log.Info().Str("coordinator", cfg.Coordinator).Str("data_addr", dp.Addr()).Str("job", resp.JobId)
	if congestion != "" {
		ev = ev.Str("tcp_congestion", congestion) // asked for; the kernel takes the first it allows
	}
	ev.Msg("joined")

	meta, _ := json.Marshal(map[string]any{"id": a.id, "host": cfg.Host, "data_addr": dp.Addr(), "cores": cfg.Cores})
	mcfg := cluster.JobMembership(cfg.Membership, joinWorld(hdr), cfg.ProcsPerCore)
	if mcfg.BindAddr == "" {
		mcfg.BindAddr = ip
	}
	member, err := cluster.StartMembership(a.id, meta, cfg.Token, mcfg, a.log, nil)
	if err != nil {
		a.leave(err.Error())
		return fmt.Errorf("worker %s: %w", a.id, err)
	}
	defer member.Close(time.Second)
	// The command stream opens first and the gossip join runs beside it:
	// a thousand workers joining gossip at once take longer than the
	// coordinator waits for a joined worker's stream (StreamOpenTimeout),
	// and nothing on the stream needs gossip.
	seeds := gossipSeeds(resp.CoordinatorGossip, hdr)
	return a.serve(ctx, func(ctx context.Context) error {
		if cfg.beforeGossipJoin != nil {
			cfg.beforeGossipJoin()
		}
		return joinGossip(ctx, member, seeds, max(cfg.JoinTimeout, gossipJoinTimeout))
	})
}

// gossipJoinTimeout is the least time a worker keeps trying to join gossip.
const gossipJoinTimeout = 30 * time.Second

// joinGossip joins gossip through one of seeds (JoinAny), trying again
// every second or so until within has passed or ctx ends.
func joinGossip(ctx context.Context, m *cluster.Membership, seeds []string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := m.JoinAny(seeds)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("could not join gossip within %v: %w", within, err)
		}
		select {
		case <-time.After(time.Duration(500+rand.IntN(1000)) * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// gossipSeeds orders the members a worker asks to join gossip: the seeds
// of the join response in random order, then the coordinator, so that the
// joins of a large job are spread over its members rather than all taken
// by the coordinator.
func gossipSeeds(coordinator string, hdr metadata.MD) []string {
	seeds := slices.Clone(hdr.Get(cluster.MDGossipSeeds))
	rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
	seeds = slices.DeleteFunc(seeds, func(s string) bool { return s == coordinator || s == "" })
	return append(seeds, coordinator)
}

// joinWorld reads the job's number of workers from the join response
// header (0 when absent or not a positive number).
func joinWorld(hdr metadata.MD) int {
	v := hdr.Get(cluster.MDWorld)
	if len(v) == 0 {
		return 0
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// join retries while the coordinator is unreachable, up to JoinTimeout,
// and gives up at once when refusal (nil in cleartext) says TLS with it
// cannot work.
func join(ctx context.Context, client pb.CoordinatorClient, cfg AgentConfig, cred, dataAddr string, refusal *cluster.TLSRefusal) (*pb.JoinResponse, metadata.MD, error) {
	deadline := time.Now().Add(cfg.JoinTimeout)
	req := &pb.JoinRequest{Token: cred, Host: cfg.Host, DataAddr: dataAddr, Cores: int32(cfg.Cores), Pid: int32(os.Getpid())}
	var refused <-chan struct{} = make(chan struct{}) // never closed in cleartext
	if refusal != nil {
		refused = refusal.Done()
	}
	for {
		attempt := min(cluster.RPCTimeout, max(time.Until(deadline), 100*time.Millisecond))
		cctx, cancel := context.WithTimeout(ctx, attempt)
		go func() {
			select {
			case <-refused:
				cancel()
			case <-cctx.Done():
			}
		}()
		var hdr metadata.MD
		resp, err := client.Join(cctx, req, grpc.WaitForReady(true), grpc.Header(&hdr))
		cancel()
		if err == nil {
			return resp, hdr, nil
		}
		if refusal != nil && refusal.Err() != nil {
			return nil, nil, &RefusedError{Msg: fmt.Sprintf("cannot join coordinator %s: %v", cfg.Coordinator, refusal.Err())}
		}
		switch status.Code(err) {
		case codes.PermissionDenied, codes.FailedPrecondition, codes.InvalidArgument:
			return nil, nil, &RefusedError{Msg: fmt.Sprintf("coordinator %s refused to admit this worker: %s", cfg.Coordinator, status.Convert(err).Message())}
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("join %s: %w", cfg.Coordinator, ctx.Err())
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("could not join coordinator %s within %v: %w", cfg.Coordinator, cfg.JoinTimeout, err)
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

type agent struct {
	cfg    AgentConfig
	cred   string // ControlCredential(cfg.Token)
	client pb.CoordinatorClient
	id     string
	dp     DataPlane
	log    zerolog.Logger
	rank   int

	mailbox *progressMailbox // the progress sender of the running job; nil before start

	mu   sync.Mutex
	last ProgressUpdate // the runner's latest update
	step atomic.Int64   // steps completed, stamped on every log line after start
}

// stepHook adds the current step to every log event.
type stepHook struct{ step *atomic.Int64 }

func (h stepHook) Run(e *zerolog.Event, _ zerolog.Level, _ string) { e.Int64("step", h.step.Load()) }

func (a *agent) leave(reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), cluster.RPCTimeout)
	defer cancel()
	if _, err := a.client.Leave(ctx, &pb.LeaveRequest{Token: a.cred, WorkerId: a.id, Reason: reason}); err != nil {
		a.log.Debug().Err(err).Msg("leave not delivered")
	}
}

// serve follows the command stream; once it is open, joinGossip runs
// beside it, and a gossip join that fails ends the membership as a failed
// one did before the stream (the worker leaves).
func (a *agent) serve(ctx context.Context, joinGossip func(context.Context) error) error {
	sctx, cancelStream := context.WithCancel(ctx)
	defer cancelStream()
	stream, err := a.client.Commands(sctx, &pb.CommandsRequest{Token: a.cred, WorkerId: a.id})
	if err != nil {
		a.leave("could not open the command stream")
		return fmt.Errorf("worker %s: open command stream: %w", a.id, err)
	}
	gossipErr := make(chan error, 1)
	go func() { gossipErr <- joinGossip(sctx) }()
	cmds := make(chan *pb.Command)
	streamErr := make(chan error, 1)
	go func() {
		for {
			c, err := stream.Recv()
			if err != nil {
				streamErr <- err
				return
			}
			select {
			case cmds <- c:
			case <-sctx.Done():
				return
			}
		}
	}()

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	defer a.stopProgress()
	var runDone chan error         // the running runner's result; nil when none runs
	started := false               // a start command was carried out (one per job)
	finished := false              // the runner completed every step
	var rejoinWithin time.Duration // the start command's rejoin timeout
	// waitRunner cancels the runner and waits for it to return (bounded).
	waitRunner := func() {
		cancelRun()
		if runDone == nil || finished {
			return
		}
		select {
		case <-runDone:
		case <-time.After(15 * time.Second):
			a.log.Error().Msg("runner did not return within 15s of cancellation")
		}
	}
	for {
		select {
		case c := <-cmds:
			switch k := c.Kind.(type) {
			case *pb.Command_Start:
				if started {
					a.log.Warn().Msg("ignoring a second start command")
					continue
				}
				started = true
				spec, err := a.startSpec(k.Start)
				if err != nil {
					a.reportError(err)
					continue
				}
				a.rank = spec.Rank
				rejoinWithin = time.Duration(k.Start.RejoinTimeoutMs) * time.Millisecond
				runDone = make(chan error, 1)
				go func() { runDone <- a.cfg.Runner(runCtx, spec) }()
			case *pb.Command_Abort:
				a.log.Warn().Str("reason", k.Abort.Reason).Msg("abort received")
				waitRunner()
				a.leave("aborted")
				return &AbortedError{Reason: k.Abort.Reason}
			case *pb.Command_Stop:
				a.log.Info().Str("reason", k.Stop.Reason).Msg("stop received")
				waitRunner()
				a.leave("stopped: " + k.Stop.Reason)
				return nil
			case *pb.Command_Rejoin:
				// Cancelling the runner closes its data plane, which fails
				// every peer's collectives at once; the old ID is forgotten
				// by the coordinator, so nothing more is reported under it.
				a.log.Warn().Str("reason", k.Rejoin.Reason).Msg("recovery: rejoining the job")
				waitRunner()
				return &rejoinError{why: "the coordinator is recovering the job: " + k.Rejoin.Reason, within: a.cfg.JoinTimeout}
			}
		case err := <-runDone:
			if err == nil {
				finished = true
				runDone = nil
				a.stopProgress()
				a.mu.Lock()
				last := a.last
				a.mu.Unlock()
				a.sendProgress(a.rank, last, true)
				a.log.Info().Msg("all steps done; waiting for the coordinator's stop")
				continue
			}
			runDone = nil
			if runCtx.Err() == nil {
				a.log.Error().Err(err).Msg("runner failed")
				a.reportError(err)
			}
			// Wait for the abort that the error report causes.
		case err := <-gossipErr:
			gossipErr = nil
			switch {
			case err == nil:
				a.log.Debug().Msg("joined gossip")
			case sctx.Err() == nil: // else cancelled: ctx.Done says why
				a.log.Error().Err(err).Msg("gossip join failed")
				waitRunner()
				a.leave(err.Error())
				return fmt.Errorf("worker %s: %w", a.id, err)
			}
		case err := <-streamErr:
			waitRunner()
			if started && rejoinWithin > 0 {
				return &rejoinError{why: fmt.Sprintf("lost the coordinator %s (%v); waiting for it to come back", a.cfg.Coordinator, err), within: rejoinWithin}
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("worker %s: coordinator %s ended the command stream without a stop", a.id, a.cfg.Coordinator)
			}
			return fmt.Errorf("worker %s: lost the coordinator %s: %w", a.id, a.cfg.Coordinator, err)
		case <-ctx.Done():
			waitRunner()
			a.leave("interrupted: " + context.Cause(ctx).Error())
			return fmt.Errorf("worker %s: %w", a.id, context.Cause(ctx))
		}
	}
}

func (a *agent) startSpec(s *pb.Start) (StartSpec, error) {
	var spec StartSpec
	if err := json.Unmarshal(s.PlanJson, &spec.Plan); err != nil {
		return spec, fmt.Errorf("start command: decode plan: %w", err)
	}
	if err := spec.Plan.Validate(); err != nil {
		return spec, fmt.Errorf("start command: %w", err)
	}
	if err := json.Unmarshal(s.JobConfigJson, &spec.Job); err != nil {
		return spec, fmt.Errorf("start command: decode job config: %w", err)
	}
	if err := spec.Job.Validate(); err != nil {
		return spec, fmt.Errorf("start command: job config: %w", err)
	}
	r := int(s.Rank)
	if r < 0 || r >= len(spec.Plan.Ranks) || spec.Plan.Ranks[r].Worker.ID != a.id {
		return spec, fmt.Errorf("start command: rank %d does not belong to worker %s in the plan", r, a.id)
	}
	if s.Generation < 0 || s.RejoinTimeoutMs < 0 {
		return spec, fmt.Errorf("start command: generation %d, rejoin timeout %d ms: must be >= 0", s.Generation, s.RejoinTimeoutMs)
	}
	spec.WorkerID, spec.Rank, spec.Token, spec.Threads, spec.Data = a.id, r, a.cfg.Token, int(s.Threads), a.dp
	spec.Generation = int(s.Generation)
	a.log = a.log.With().Int("rank", r).Logger().Hook(stepHook{&a.step})
	spec.Log = a.log
	spec.Report = a.reporter(r)
	spec.ReportShard = a.shardReporter(r)
	if ck := s.Checkpoint; ck != nil {
		if ck.Every < 0 || ck.ResumeStep < 0 {
			return spec, fmt.Errorf("start command: checkpoint every %d, resume step %d: must be >= 0", ck.Every, ck.ResumeStep)
		}
		spec.Checkpoint = cluster.CheckpointSpec{Dir: ck.Dir, Every: int(ck.Every), ResumeDir: ck.ResumeDir, ResumeStep: ck.ResumeStep}
	}
	spec.Log.Info().Str("mesh", spec.Plan.Mesh.String()).Int("steps", spec.Job.Train.Steps).Msg("start")
	return spec, nil
}

// reporter hands progress to a sender goroutine, so the training loop never
// waits on the control plane: at most every 200 ms, and always validation
// results; the final update goes out with done=true when the runner returns
// (after the sender is flushed, see stopProgress).
func (a *agent) reporter(rank int) func(ProgressUpdate) {
	var sent time.Time
	mb := &progressMailbox{wake: make(chan struct{}, 1), stop: make(chan struct{}), exited: make(chan struct{})}
	a.mailbox = mb
	go func() {
		defer close(mb.exited)
		for {
			select {
			case <-mb.wake:
			case <-mb.stop:
				for _, u := range mb.take() {
					a.sendProgress(rank, u, false)
				}
				return
			}
			for _, u := range mb.take() {
				a.sendProgress(rank, u, false)
			}
		}
	}()
	return func(u ProgressUpdate) {
		a.mu.Lock()
		a.last = u
		a.mu.Unlock()
		a.step.Store(int64(u.Step))
		if !u.HasVal && time.Since(sent) < 200*time.Millisecond {
			return // a later update supersedes this one
		}
		sent = time.Now()
		mb.put(u)
	}
}

// maxPendingProgress bounds the updates a stalled sender accumulates.
const maxPendingProgress = 16

// progressMailbox holds the unsent progress for the sender: the newest
// update, preceded by an unsent one carrying a validation loss (which is
// never superseded, so the coordinator sees it at its own step).
type progressMailbox struct {
	mu      sync.Mutex
	pending []ProgressUpdate // unsent validation updates, then the newest (bounded)
	wake    chan struct{}    // capacity 1
	stop    chan struct{}
	exited  chan struct{}
}

func (mb *progressMailbox) put(u ProgressUpdate) {
	mb.mu.Lock()
	switch n := len(mb.pending); {
	case n == 0, mb.pending[n-1].HasVal:
		if n == maxPendingProgress { // a stalled sender: drop the oldest
			mb.pending = append(mb.pending[:0], mb.pending[1:]...)
		}
		mb.pending = append(mb.pending, u)
	default: // the newest unsent one has no validation loss: replace it
		mb.pending[n-1] = u
	}
	mb.mu.Unlock()
	select {
	case mb.wake <- struct{}{}:
	default:
	}
}

// take removes and returns everything pending, oldest first.
func (mb *progressMailbox) take() []ProgressUpdate {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	out := mb.pending
	mb.pending = nil
	return out
}

// stopProgress flushes the sender's pending update and ends it (bounded by
// the RPC timeout of that one send).
func (a *agent) stopProgress() {
	if mb := a.mailbox; mb != nil {
		a.mailbox = nil
		close(mb.stop)
		<-mb.exited
	}
}

func (a *agent) sendProgress(rank int, u ProgressUpdate, done bool) {
	ctx, cancel := context.WithTimeout(context.Background(), cluster.RPCTimeout)
	defer cancel()
	_, err := a.client.ReportProgress(ctx, &pb.ProgressReport{Token: a.cred, WorkerId: a.id, Rank: int32(rank),
		Step: int64(u.Step), Loss: u.Loss, TokensPerSec: u.TokensPerSec, HasValLoss: u.HasVal, ValLoss: u.ValLoss,
		Done: done, Tokens: u.Tokens, DataSeconds: u.Phases.Data, ComputeSeconds: u.Phases.Compute,
		CheckpointSeconds: u.Phases.Checkpoint, ValidationSeconds: u.Phases.Validation, ExpertLoad: loadToProto(u.Load)})
	if err != nil {
		a.log.Warn().Err(err).Msg("progress report not delivered")
	}
}

// shardReporter sends checkpoint shard reports for rank.
func (a *agent) shardReporter(rank int) func(int, checkpoint.ShardInfo, error) error {
	return func(step int, info checkpoint.ShardInfo, werr error) error {
		req := &pb.ShardReport{Token: a.cred, WorkerId: a.id, Rank: int32(rank), Step: int64(step)}
		if werr != nil {
			req.Error = werr.Error()
		} else {
			b, err := json.Marshal(info)
			if err != nil {
				return fmt.Errorf("encode shard info: %w", err)
			}
			req.ShardInfoJson = b
		}
		ctx, cancel := context.WithTimeout(context.Background(), cluster.RPCTimeout)
		defer cancel()
		if _, err := a.client.ReportShard(ctx, req); err != nil {
			return cluster.RPCError(a.cfg.Coordinator, "shard report", err)
		}
		a.log.Debug().Int("ckpt_step", step).Str("file", info.File).Int64("bytes", info.Size).Msg("shard reported")
		return nil
	}
}

func (a *agent) reportError(err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cluster.RPCTimeout)
	defer cancel()
	if _, e := a.client.ReportError(ctx, &pb.ErrorReport{Token: a.cred, WorkerId: a.id, Rank: int32(a.rank), Message: err.Error()}); e != nil {
		a.log.Warn().Err(e).Msg("error report not delivered")
	}
}
