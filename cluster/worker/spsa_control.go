package worker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moetrain/moetrain/cluster"
	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// CoordinatedRunner is the runner of a worker that knows its coordinator's
// control-plane address (`worker --join`, a launched worker process): an
// SPSA job's ranks get a line to the coordinator's log and member sets
// (docs/control-plane.md#spsa-join), every other job runs RunMesh.
func CoordinatedRunner(coordinator string, tlsCfg *tls.Config, procsPerCore float64) Runner {
	return func(ctx context.Context, spec StartSpec) error {
		if spec.Job.Train.Mode != train.ModeSPSA {
			return RunMesh(ctx, spec)
		}
		conn, _, err := cluster.DialCoordinatorLoad(coordinator, procsPerCore, tlsCfg)
		if err != nil {
			return fmt.Errorf("spsa runner: %w", err)
		}
		defer conn.Close()
		return runSPSA(ctx, spec, &spsaControl{client: pb.NewCoordinatorClient(conn), cred: cluster.ControlCredential(spec.Token),
			id: spec.WorkerID, addr: coordinator})
	}
}

// spsaControl is an SPSA rank's line to the coordinator: the log it keeps
// and the member sets it publishes.
type spsaControl struct {
	client   pb.CoordinatorClient
	cred, id string
	addr     string
}

// spsaRPCError is a call the coordinator refused (its code kept).
type spsaRPCError struct {
	code codes.Code
	err  error
}

func (e *spsaRPCError) Error() string { return e.err.Error() }

// spsaRefused reports whether err is a call refused with code.
func spsaRefused(err error, code codes.Code) bool {
	var e *spsaRPCError
	return errors.As(err, &e) && e.code == code
}

// spsaCallBound bounds one logical call with its retries: a coordinator
// that restarts comes back within it (docs/control-plane.md#spsa-join).
const spsaCallBound = 30 * time.Second

// retry runs call (one attempt, bounded by RPCTimeout) until it succeeds,
// fails with a code a retry cannot mend, or spsaCallBound has passed.
func (c *spsaControl) retry(ctx context.Context, what string, call func(context.Context) error) error {
	deadline := time.Now().Add(spsaCallBound)
	for {
		actx, cancel := context.WithTimeout(ctx, cluster.RPCTimeout)
		err := call(actx)
		cancel()
		if err == nil {
			return nil
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		default:
			return &spsaRPCError{code: status.Code(err), err: cluster.RPCError(c.addr, what, err)}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no answer from coordinator %s within %v: %w", what, c.addr, spsaCallBound, err)
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// appendRecs hands the coordinator the records (acknowledged once fsync'd
// there) and returns the step after which the members pause (-1: none).
func (c *spsaControl) appendRecs(ctx context.Context, base uint32, recs ...spsa.Record) (int64, error) {
	req := &pb.SPSAAppendRequest{Token: c.cred, WorkerId: c.id, Base: base, Records: spsa.AppendRecords(nil, recs...)}
	var resp *pb.SPSAAppendResponse
	err := c.retry(ctx, "spsa append", func(ctx context.Context) (err error) {
		resp, err = c.client.SPSAAppend(ctx, req)
		return err
	})
	if err != nil {
		return -1, err
	}
	return resp.PauseAfter, nil
}

// appendAll hands recs over in calls of at most SPSALogChunk bytes.
func (c *spsaControl) appendAll(ctx context.Context, base uint32, recs []spsa.Record) error {
	for len(recs) > 0 {
		n, size := 0, int64(0)
		for n < len(recs) && (n == 0 || size+spsa.RecordSize(len(recs[n].Entries)) <= cluster.SPSALogChunk) {
			size += spsa.RecordSize(len(recs[n].Entries))
			n++
		}
		if _, err := c.appendRecs(ctx, base, recs[:n]...); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// spsaFetched is what one read of the coordinator's log returned.
type spsaFetched struct {
	exists bool // false: the coordinator holds no log yet
	params spsa.LogParams
	recs   []spsa.Record
	bytes  int64 // the log bytes received (header included)
}

// fetch reads the coordinator's log from step from (a stream of chunks of
// at most 1 MiB). The records must start at from.
func (c *spsaControl) fetch(ctx context.Context, from int64) (spsaFetched, error) {
	var out spsaFetched
	err := c.retry(ctx, "spsa log read", func(ctx context.Context) error {
		stream, err := c.client.SPSALog(ctx, &pb.SPSALogRequest{Token: c.cred, WorkerId: c.id, FromStep: from})
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		for {
			ch, err := stream.Recv()
			if err != nil {
				if status.Code(err) == codes.NotFound {
					out = spsaFetched{}
					return nil
				}
				return err
			}
			buf.Write(ch.Data)
			if ch.NextStep >= 0 {
				out = spsaFetched{exists: true, bytes: int64(buf.Len())}
				break
			}
		}
		var derr error
		out.params, out.recs, derr = spsa.DecodeLog(&buf)
		if derr != nil {
			return status.Errorf(codes.DataLoss, "the coordinator's spsa log from step %d: %v", from, derr)
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	if len(out.recs) > 0 && out.recs[0].Step != from {
		return out, fmt.Errorf("spsa log read from step %d: the coordinator sent records from step %d", from, out.recs[0].Step)
	}
	return out, nil
}

// joining asks whether this worker was started to join a running set.
func (c *spsaControl) joining(ctx context.Context) (bool, error) {
	var resp *pb.SPSAWaitResponse
	err := c.retry(ctx, "spsa role", func(ctx context.Context) (err error) {
		resp, err = c.client.SPSAWait(ctx, &pb.SPSAWaitRequest{Token: c.cred, WorkerId: c.id, Role: true})
		return err
	})
	if err != nil {
		return false, err
	}
	return resp.Joining, nil
}

// waitOnce says this worker is at step and returns the coordinator's
// answer: go with the member set, or not yet (after at most about a
// second).
func (c *spsaControl) waitOnce(ctx context.Context, step int64) (*pb.SPSAWaitResponse, error) {
	var resp *pb.SPSAWaitResponse
	err := c.retry(ctx, "spsa wait", func(ctx context.Context) (err error) {
		resp, err = c.client.SPSAWait(ctx, &pb.SPSAWaitRequest{Token: c.cred, WorkerId: c.id, Step: step})
		return err
	})
	return resp, err
}

// errSPSAWaitBound: the member set did not come in time.
var errSPSAWaitBound = errors.New("no member set from the coordinator")

// waitGo waits (bounded by within) until the coordinator publishes the
// member set this worker resumes with at step.
func (c *spsaControl) waitGo(ctx context.Context, step int64, within time.Duration) (*pb.SPSAWaitResponse, error) {
	deadline := time.Now().Add(within)
	for {
		resp, err := c.waitOnce(ctx, step)
		if err != nil {
			return nil, err
		}
		if resp.Go {
			return resp, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("paused after step %d: %w within %v", step-1, errSPSAWaitBound, within)
		}
	}
}
