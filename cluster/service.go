package cluster

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/moetrain/moetrain/cluster/proto"
)

// service implements pb.CoordinatorServer on top of the coordinator loop.
type service struct {
	pb.UnimplementedCoordinatorServer
	c    *Coordinator
	cred string // ControlCredential(c.cfg.Token)
}

// checkToken admits a request that carries the job's control-plane
// credential (ControlCredential of the job token). It is kept under TLS
// too: a cluster's own CA may sign the certificates of many jobs, and the
// credential is what tells this job's workers from theirs.
func (s *service) checkToken(ctx context.Context, token, what string) error {
	if subtle.ConstantTimeCompare([]byte(token), []byte(s.cred)) == 1 {
		return nil
	}
	from := "unknown peer"
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	s.c.log.Warn().Str("from", from).Str("rpc", what).Msg("refused a request with a wrong job token")
	return status.Errorf(codes.PermissionDenied, "wrong job token: this coordinator (job %s) refuses %s from %s; pass the job's --token",
		s.c.cfg.JobID, what, from)
}

var errEnded = status.Error(codes.Unavailable, "the job has ended")

func (s *service) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	if err := s.checkToken(ctx, req.Token, "join"); err != nil {
		return nil, err
	}
	if req.DataAddr == "" || req.Host == "" {
		return nil, status.Errorf(codes.InvalidArgument, "join: host %q and data address %q must both be set", req.Host, req.DataAddr)
	}
	info := WorkerInfo{Host: req.Host, DataAddr: req.DataAddr, Cores: int(req.Cores), Pid: int(req.Pid)}
	cmds := s.c.Submit(Joined{Info: info})
	if cmds == nil {
		return nil, errEnded
	}
	switch x := cmds[0].(type) {
	case Accept:
		// Gossip hints (cluster/worker/agent.go, MDGossipSeeds): a joiner asks one of a
		// few random members for the member list before the coordinator.
		hdr := metadata.Pairs(MDWorld, strconv.Itoa(s.c.cfg.Workers))
		if seeds := s.c.member.RandomPeers(JoinSeeds); len(seeds) > 0 {
			hdr.Append(MDGossipSeeds, seeds...)
		}
		if err := grpc.SetHeader(ctx, hdr); err != nil {
			s.c.log.Debug().Err(err).Str("worker", x.ID).Msg("join: gossip hints not sent")
		}
		return &pb.JoinResponse{WorkerId: x.ID, JobId: s.c.cfg.JobID, CoordinatorGossip: s.gossipAddrFor(ctx)}, nil
	case Reject:
		return nil, status.Errorf(codes.FailedPrecondition, "join refused: %s", x.Reason)
	}
	return nil, status.Error(codes.Internal, "join: no answer from the coordinator core")
}

func (s *service) Commands(req *pb.CommandsRequest, stream pb.Coordinator_CommandsServer) error {
	if err := s.checkToken(stream.Context(), req.Token, "commands"); err != nil {
		return err
	}
	s.c.mu.Lock()
	box := s.c.outboxes[req.WorkerId]
	if box != nil {
		s.c.opened[req.WorkerId] = true
	}
	s.c.mu.Unlock()
	if box == nil {
		return status.Errorf(codes.NotFound, "commands: no joined worker %q", req.WorkerId)
	}
	ctx := stream.Context()
	for {
		select {
		case cmd := <-box:
			if err := stream.Send(cmd); err != nil {
				s.c.Submit(Lost{ID: req.WorkerId, Reason: fmt.Sprintf("command stream broken: %v", err)})
				return err
			}
		case <-ctx.Done():
			s.c.log.Debug().Str("worker", req.WorkerId).Msg("command stream closed")
			s.c.Submit(Lost{ID: req.WorkerId, Reason: "command stream closed (process exited or connection lost)"})
			return ctx.Err()
		case <-s.c.done:
			return nil
		}
	}
}

func (s *service) ReportProgress(ctx context.Context, req *pb.ProgressReport) (*pb.Ack, error) {
	if err := s.checkToken(ctx, req.Token, "progress report"); err != nil {
		return nil, err
	}
	s.c.Submit(Progress{ID: req.WorkerId, Step: int(req.Step), Loss: req.Loss, TokensPerSec: req.TokensPerSec,
		HasVal: req.HasValLoss, ValLoss: req.ValLoss, Done: req.Done})
	s.c.recordProgress(req)
	return &pb.Ack{}, nil
}

func (s *service) ReportError(ctx context.Context, req *pb.ErrorReport) (*pb.Ack, error) {
	if err := s.checkToken(ctx, req.Token, "error report"); err != nil {
		return nil, err
	}
	s.c.log.Error().Str("worker", req.WorkerId).Int32("rank", req.Rank).Str("error", req.Message).Msg("worker reported an error")
	s.c.Submit(Failed{ID: req.WorkerId, Message: req.Message})
	return &pb.Ack{}, nil
}

func (s *service) ReportShard(ctx context.Context, req *pb.ShardReport) (*pb.Ack, error) {
	if err := s.checkToken(ctx, req.Token, "shard report"); err != nil {
		return nil, err
	}
	if req.Step < 0 || req.Step > math.MaxInt32 {
		return nil, status.Errorf(codes.InvalidArgument, "shard report of worker %s: step %d out of range", req.WorkerId, req.Step)
	}
	ev := ShardWritten{ID: req.WorkerId, Step: int(req.Step), Err: req.Error}
	if req.Error == "" {
		if err := json.Unmarshal(req.ShardInfoJson, &ev.Shard); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "shard report of worker %s, step %d: shard info: %v", req.WorkerId, req.Step, err)
		}
		if ev.Shard.Rank != int(req.Rank) || ev.Shard.File == "" {
			return nil, status.Errorf(codes.InvalidArgument, "shard report of worker %s, step %d: shard info names rank %d file %q, the report rank %d",
				req.WorkerId, req.Step, ev.Shard.Rank, ev.Shard.File, req.Rank)
		}
	} else {
		s.c.log.Error().Str("worker", req.WorkerId).Int32("rank", req.Rank).Int64("ckpt_step", req.Step).Str("error", req.Error).
			Msg("worker could not write its checkpoint shard")
	}
	if s.c.Submit(ev) == nil && s.c.ended() {
		return nil, errEnded
	}
	return &pb.Ack{}, nil
}

func (s *service) Leave(ctx context.Context, req *pb.LeaveRequest) (*pb.Ack, error) {
	if err := s.checkToken(ctx, req.Token, "leave"); err != nil {
		return nil, err
	}
	s.c.log.Info().Str("worker", req.WorkerId).Str("reason", req.Reason).Msg("worker leaving")
	s.c.mu.Lock()
	if s.c.outboxes[req.WorkerId] != nil {
		s.c.left[req.WorkerId] = true
	}
	s.c.mu.Unlock()
	s.c.Submit(Left{ID: req.WorkerId, Reason: req.Reason})
	return &pb.Ack{}, nil
}

func (s *service) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	if err := s.checkToken(ctx, req.Token, "status"); err != nil {
		return nil, err
	}
	var st Status
	if !s.c.onLoop(func() { st = s.c.core.Status() }) {
		return nil, errEnded
	}
	return statusToProto(s.c.cfg.JobID, st), nil
}

func (s *service) Stop(ctx context.Context, req *pb.StopRequest) (*pb.Ack, error) {
	if err := s.checkToken(ctx, req.Token, "stop"); err != nil {
		return nil, err
	}
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		reason = "stopped by operator"
	}
	s.c.log.Warn().Str("reason", reason).Msg("stop requested")
	s.c.Submit(StopRequested{Reason: reason})
	return &pb.Ack{}, nil
}

func statusToProto(jobID string, s Status) *pb.StatusResponse {
	out := &pb.StatusResponse{JobId: jobID, Phase: string(s.Phase), Reason: s.Reason,
		ExpectedWorkers: int32(s.ExpectedWorkers), Step: int64(s.Step), TotalSteps: int64(s.TotalSteps),
		Loss: s.Loss, TokensPerSec: s.TokensPerSec, HasValLoss: s.HasVal, ValLoss: s.ValLoss, Mesh: s.Mesh,
		LastCheckpoint: int64(s.LastCheckpoint), Generation: int64(s.Generation), Restarts: int64(s.Restarts)}
	for _, w := range s.Workers {
		out.Workers = append(out.Workers, &pb.WorkerStatus{Id: w.Info.ID, Host: w.Info.Host, DataAddr: w.Info.DataAddr,
			Rank: int32(w.Rank), Step: int64(w.Step), Loss: w.Loss, TokensPerSec: w.TokensPerSec, State: w.State,
			Pid: int32(w.Info.Pid)})
	}
	return out
}

// gossipAddrFor is the coordinator's gossip address as the calling worker
// can reach it: when gossip is bound to every interface, the IP the worker
// used to reach the control plane, with the gossip port.
func (s *service) gossipAddrFor(ctx context.Context) string {
	addr := s.c.GossipAddr()
	p, ok := peer.FromContext(ctx)
	if !ok || p.LocalAddr == nil || !s.c.gossipAnyIP {
		return addr
	}
	tcp, ok := p.LocalAddr.(*net.TCPAddr)
	_, port, err := net.SplitHostPort(addr)
	if !ok || err != nil {
		return addr
	}
	return net.JoinHostPort(tcp.IP.String(), port)
}

// Join response headers (gRPC metadata): hints for the worker's gossip,
// which a worker does without when they are absent.
const (
	// MDGossipSeeds: gossip addresses (host:port) of a few members already
	// in gossip, chosen at random per join.
	MDGossipSeeds = "moetrain-gossip-seeds"
	// MDWorld: the job's number of workers (JobMembership's world).
	MDWorld = "moetrain-world"
)

// JoinSeeds is how many members besides the coordinator a joiner is
// offered as gossip seeds.
const JoinSeeds = 3
