package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/train"
)

// coordSPSA is the coordinator's side of a train.mode = "spsa" job
// (docs/control-plane.md#spsa-join): the log in the run directory and the
// member sets the core published, for SPSAWait.
type coordSPSA struct {
	keeper *spsaLogKeeper

	mu      sync.Mutex
	worlds  map[int64]spsaWorldMsg // by start step
	changed chan struct{}          // closed and replaced at every publish
}

type spsaWorldMsg struct {
	epoch    int64
	planJSON []byte
	ranks    map[string]int // worker ID → rank
}

// newCoordSPSA opens the SPSA log of the job in cfg's run directory (nil,
// nil when the job is not an SPSA job or the coordinator has no run
// directory: its workers keep today's log on rank 0 and none can join).
func newCoordSPSA(cfg CoordinatorConfig) (*coordSPSA, error) {
	if cfg.StateDir == "" || len(cfg.JobConfigJSON) == 0 {
		return nil, nil
	}
	var job train.JobConfig
	if err := json.Unmarshal(cfg.JobConfigJSON, &job); err != nil || job.Train.Mode != train.ModeSPSA {
		return nil, nil // the workers refuse a job config they cannot read
	}
	// Rank 0's own copy (spsa.log) must be another file: both writers
	// create theirs afresh and append to it.
	if job.SPSA.Log != "" && samePath(job.SPSA.Log, filepath.Join(cfg.StateDir, SPSALogName)) {
		return nil, fmt.Errorf("coordinator: spsa.log = %q is the coordinator's own log of the job (%s); leave spsa.log unset or name another file for rank 0's copy",
			job.SPSA.Log, filepath.Join(cfg.StateDir, SPSALogName))
	}
	k, err := openSPSALogKeeper(cfg.StateDir, job.SPSA)
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return &coordSPSA{keeper: k, worlds: map[int64]spsaWorldMsg{}, changed: make(chan struct{})}, nil
}

// publish records a member set for SPSAWait (on the coordinator loop).
func (s *coordSPSA) publish(w SPSAWorld) {
	planJSON, _ := json.Marshal(w.Plan) // plain data: cannot fail
	msg := spsaWorldMsg{epoch: int64(w.Epoch), planJSON: planJSON, ranks: map[string]int{}}
	for _, r := range w.Plan.Ranks {
		msg.ranks[r.Worker.ID] = r.Rank
	}
	s.mu.Lock()
	s.worlds[int64(w.Start)] = msg
	s.mu.Unlock()
	s.poke()
}

// poke wakes the SPSAWait calls held (the log grew).
func (s *coordSPSA) poke() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *coordSPSA) world(start int64) (spsaWorldMsg, bool, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.worlds[start]
	return w, ok, s.changed
}

// closeSPSA closes the SPSA log, if any.
func (c *Coordinator) closeSPSA() {
	if c.spsa != nil {
		if err := c.spsa.keeper.Close(); err != nil {
			c.log.Warn().Err(err).Msg("spsa log not closed cleanly")
		}
	}
}

// applySPSA carries out the core's SPSA commands (on the coordinator loop).
func (c *Coordinator) applySPSA(cmd Command) {
	switch x := cmd.(type) {
	case SPSAWorld:
		c.log.Info().Int("epoch", x.Epoch).Int("start_step", x.Start).Int("workers", len(x.Plan.Ranks)).
			Str("reason", x.Reason).Msg("spsa: member set published")
		if c.spsa != nil {
			c.spsa.publish(x)
		}
	case SPSAPause:
		c.log.Info().Int("after_step", x.After).Msg("spsa: the members pause for a member set change")
	}
}

// spsaKeeper checks an SPSA call's token and returns the coordinator's log
// keeper; what names the call in errors.
func (s *service) spsaKeeper(ctx context.Context, token, what string) (*coordSPSA, error) {
	if err := s.checkToken(ctx, token, what); err != nil {
		return nil, err
	}
	if s.c.spsa == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: this coordinator keeps no SPSA log (not a train.mode = \"spsa\" job, or no run directory)", what)
	}
	return s.c.spsa, nil
}

func (s *service) SPSAAppend(ctx context.Context, req *pb.SPSAAppendRequest) (*pb.SPSAAppendResponse, error) {
	sp, err := s.spsaKeeper(ctx, req.Token, "spsa append")
	if err != nil {
		return nil, err
	}
	if len(req.Records) > SPSALogChunk {
		return nil, status.Errorf(codes.InvalidArgument, "spsa append of worker %s: %d bytes of records, at most %d per call", req.WorkerId, len(req.Records), SPSALogChunk)
	}
	var keeper bool
	if !s.c.onLoop(func() { keeper = s.c.core.SPSALogKeeper(req.WorkerId) }) {
		return nil, errEnded
	}
	if !keeper {
		return nil, status.Errorf(codes.FailedPrecondition, "spsa append: worker %q is not rank 0 of the running job: only it hands the coordinator log records", req.WorkerId)
	}
	next, last, err := sp.keeper.append(req.Base, req.Records)
	if err != nil {
		if bad := (*spsaInputError)(nil); errors.As(err, &bad) {
			return nil, status.Errorf(codes.InvalidArgument, "worker %s: %v", req.WorkerId, err)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "worker %s: %v", req.WorkerId, err)
	}
	sp.poke() // a joiner waiting at the log's end reads on
	resp := &pb.SPSAAppendResponse{NextStep: next, PauseAfter: -1}
	for _, cmd := range s.c.Submit(SPSALogged{ID: req.WorkerId, Step: int(last)}) {
		if p, ok := cmd.(SPSAPause); ok {
			resp.PauseAfter = int64(p.After)
		}
	}
	return resp, nil
}

func (s *service) SPSALog(req *pb.SPSALogRequest, stream pb.Coordinator_SPSALogServer) error {
	sp, err := s.spsaKeeper(stream.Context(), req.Token, "spsa log")
	if err != nil {
		return err
	}
	err = sp.keeper.read(req.FromStep, func(data []byte, next int64) error {
		return stream.Send(&pb.SPSALogChunk{Data: data, NextStep: next})
	})
	var rng *spsaRangeError
	switch {
	case errors.Is(err, errSPSANoLog):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &rng):
		return status.Error(codes.OutOfRange, err.Error())
	case err != nil && status.Code(err) == codes.Unknown:
		return status.Errorf(codes.Internal, "%v", err)
	}
	return err
}

// spsaWaitHold is how long SPSAWait holds a call for the member set.
const spsaWaitHold = time.Second

func (s *service) SPSAWait(ctx context.Context, req *pb.SPSAWaitRequest) (*pb.SPSAWaitResponse, error) {
	sp, err := s.spsaKeeper(ctx, req.Token, "spsa wait")
	if err != nil {
		return nil, err
	}
	resp := &pb.SPSAWaitResponse{StartStep: req.Step}
	if req.Role {
		var err error
		resp.Joining, err = s.spsaJoining(req.WorkerId)
		return resp, err
	}
	if req.Step < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "spsa wait of worker %s: step %d", req.WorkerId, req.Step)
	}
	s.c.Submit(SPSAAtBoundary{ID: req.WorkerId, Step: int(req.Step)})
	if s.c.ended() {
		return nil, errEnded
	}
	hold := time.NewTimer(spsaWaitHold)
	defer hold.Stop()
	for {
		w, ok, changed := sp.world(req.Step)
		if r, in := w.ranks[req.WorkerId]; ok && in {
			resp.Go, resp.Epoch, resp.PlanJson, resp.Rank = true, w.epoch, w.planJSON, int64(r)
			break
		}
		if sp.keeper.next() > req.Step { // a joiner behind the log: fetch the rest now
			break
		}
		select {
		case <-changed:
			continue
		case <-hold.C:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-s.c.done:
			return nil, errEnded
		}
		break
	}
	resp.LoggedSteps = sp.keeper.next()
	return resp, nil
}

// spsaJoining answers SPSAWait's role question: whether worker id was
// started to join a running SPSA job.
func (s *service) spsaJoining(id string) (bool, error) {
	var joining bool
	if !s.c.onLoop(func() { joining = s.c.core.SPSAJoining(id) }) {
		return false, errEnded
	}
	return joining, nil
}

// samePath reports whether a and b name the same file, as absolute paths
// from this process's working directory.
func samePath(a, b string) bool {
	x, err1 := filepath.Abs(a)
	y, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && x == y
}
