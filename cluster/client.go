package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"text/tabwriter"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/moetrain/moetrain/cluster/proto"
)

// rpcErr turns a gRPC error into a message naming the coordinator.
func rpcErr(addr, what string, err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("%s: no coordinator reachable at %s: %s", what, addr, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: coordinator at %s did not answer within %v", what, addr, rpcTimeout)
	}
	return fmt.Errorf("%s: coordinator at %s: %s", what, addr, st.Message())
}

// QueryStatus asks the coordinator at addr for the job's status, in
// cleartext.
func QueryStatus(ctx context.Context, addr, token string) (*pb.StatusResponse, error) {
	return QueryStatusTLS(ctx, addr, token, nil)
}

// QueryStatusTLS is QueryStatus over TLS with tlsCfg (nil: cleartext).
func QueryStatusTLS(ctx context.Context, addr, token string, tlsCfg *tls.Config) (*pb.StatusResponse, error) {
	conn, refusal, err := dialCoordinator(addr, tlsCfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := pb.NewCoordinatorClient(conn).Status(ctx, &pb.StatusRequest{Token: ControlCredential(token)})
	if err != nil {
		return nil, tlsOrRPCErr(addr, "status", refusal, err)
	}
	return resp, nil
}

// RequestStop asks the coordinator at addr to stop the job, in cleartext.
func RequestStop(ctx context.Context, addr, token, reason string) error {
	return RequestStopTLS(ctx, addr, token, reason, nil)
}

// RequestStopTLS is RequestStop over TLS with tlsCfg (nil: cleartext).
func RequestStopTLS(ctx context.Context, addr, token, reason string, tlsCfg *tls.Config) error {
	conn, refusal, err := dialCoordinator(addr, tlsCfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	if _, err := pb.NewCoordinatorClient(conn).Stop(ctx, &pb.StopRequest{Token: ControlCredential(token), Reason: reason}); err != nil {
		return tlsOrRPCErr(addr, "stop", refusal, err)
	}
	return nil
}

// tlsOrRPCErr is the TLS refusal when there was one, else rpcErr.
func tlsOrRPCErr(addr, what string, refusal *tlsRefusal, err error) error {
	if refusal != nil && refusal.Err() != nil {
		return fmt.Errorf("%s: %w", what, refusal.Err())
	}
	return rpcErr(addr, what, err)
}

// FormatStatus writes a status response as text.
func FormatStatus(w io.Writer, s *pb.StatusResponse) error {
	fmt.Fprintf(w, "job %s: %s", s.JobId, s.Phase)
	if s.Reason != "" {
		fmt.Fprintf(w, " (%s)", s.Reason)
	}
	fmt.Fprintf(w, "\nstep %d/%d  loss %.4f", s.Step, s.TotalSteps, s.Loss)
	if s.HasValLoss {
		fmt.Fprintf(w, "  val %.4f", s.ValLoss)
	}
	fmt.Fprintf(w, "  %.0f tok/s  mesh %s  workers %d/%d", s.TokensPerSec, s.Mesh, len(s.Workers), s.ExpectedWorkers)
	if s.LastCheckpoint > 0 {
		fmt.Fprintf(w, "  checkpoint step %d", s.LastCheckpoint)
	}
	if s.Restarts > 0 {
		fmt.Fprintf(w, "  generation %d (%d restarts)", s.Generation, s.Restarts)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tRANK\tHOST\tPID\tDATA-ADDR\tSTATE\tSTEP\tLOSS\tTOK/S")
	for _, x := range s.Workers {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%d\t%.4f\t%.0f\n", x.Id, x.Rank, x.Host, x.Pid, x.DataAddr, x.State, x.Step, x.Loss, x.TokensPerSec)
	}
	return tw.Flush()
}
