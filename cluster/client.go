package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	pb "github.com/moetrain/moetrain/cluster/proto"
)

// RPCError turns a gRPC error into a message naming the coordinator.
func RPCError(addr, what string, err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("%s: no coordinator reachable at %s: %s", what, addr, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: coordinator at %s did not answer within %v", what, addr, RPCTimeout)
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
	conn, refusal, err := DialCoordinator(addr, tlsCfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, RPCTimeout)
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
	conn, refusal, err := DialCoordinator(addr, tlsCfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, RPCTimeout)
	defer cancel()
	if _, err := pb.NewCoordinatorClient(conn).Stop(ctx, &pb.StopRequest{Token: ControlCredential(token), Reason: reason}); err != nil {
		return tlsOrRPCErr(addr, "stop", refusal, err)
	}
	return nil
}

// tlsOrRPCErr is the TLS refusal when there was one, else RPCError.
func tlsOrRPCErr(addr, what string, refusal *TLSRefusal, err error) error {
	if refusal != nil && refusal.Err() != nil {
		return fmt.Errorf("%s: %w", what, refusal.Err())
	}
	return RPCError(addr, what, err)
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

// RPCTimeout bounds every unary control-plane call.
const RPCTimeout = 10 * time.Second

// DialCoordinator opens a client connection with keepalives for an
// unloaded host (see DialCoordinatorLoad).
func DialCoordinator(addr string, tlsCfg *tls.Config) (*grpc.ClientConn, *TLSRefusal, error) {
	return DialCoordinatorLoad(addr, 0, tlsCfg)
}

// DialCoordinatorLoad opens the client connection, over TLS with tlsCfg
// (nil: cleartext), with keepalives: the kernel's (a coordinator host that
// stopped answering is found in about 6 s) and gRPC's (a coordinator
// process that does not answer a ping within LivenessBound(1,
// procsPerCore)); see liveness.go. The refusal (nil in cleartext) is set
// when TLS with the coordinator cannot work.
func DialCoordinatorLoad(addr string, procsPerCore float64, tlsCfg *tls.Config) (*grpc.ClientConn, *TLSRefusal, error) {
	creds, refusal := clientCreds(tlsCfg)
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(dialControl),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: LivenessBound(1, procsPerCore),
			PermitWithoutStream: true}),
		// A coordinator restarted after a crash is found within a second
		// or two (the default backoff grows to two minutes).
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6,
			Jitter: 0.2, MaxDelay: 2 * time.Second}, MinConnectTimeout: 5 * time.Second}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator address %q: %w", addr, err)
	}
	return conn, refusal, nil
}
