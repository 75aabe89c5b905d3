package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// spsaTestRecords are n steps of two workers' entries.
func spsaTestRecords(from, n int) []spsa.Record {
	var out []spsa.Record
	for s := from; s < from+n; s++ {
		out = append(out, spsa.Record{Step: int64(s), Entries: []spsa.Entry{
			{Worker: 1, Dir: 0, Raw: uint32(s)}, {Worker: 2, Dir: 0, Raw: uint32(3*s + 1)}}})
	}
	return out
}

// coordSPSAClient runs a coordinator of an SPSA job keeping its log in
// runDir and returns a client of its control plane; stop ends it.
func coordSPSAClient(t testing.TB, runDir string) (pb.CoordinatorClient, func()) {
	t.Helper()
	job := jobtest.TinyJob()
	job.Train.Mode, job.Train.Steps = train.ModeSPSA, 100
	return coordSPSAJobClient(t, runDir, job)
}

// coordSPSAJobClient is coordSPSAClient for job.
func coordSPSAJobClient(t testing.TB, runDir string, job train.JobConfig) (pb.CoordinatorClient, func()) {
	t.Helper()
	c := spsaServe(t, job, 2, runDir, nil)
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	go func() {
		c.Run(ctx)
		close(ran)
	}()
	// Two workers join (nobody follows their commands): w0 is rank 0, the
	// one whose appends the coordinator takes.
	for i := range 2 {
		if cmds := c.Submit(cluster.Joined{Info: cluster.WorkerInfo{Host: "h", DataAddr: fmt.Sprintf("127.0.0.1:%d", 1+i), Pid: 1 + i}}); len(cmds) == 0 {
			t.Fatal("join refused")
		}
	}
	conn, _, err := cluster.DialCoordinator(c.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return pb.NewCoordinatorClient(conn), func() {
		conn.Close()
		for _, id := range []string{"w0", "w1"} { // the job ends without a drain
			c.Submit(cluster.Left{ID: id, Reason: "test over"})
		}
		cancel()
		select {
		case <-ran:
		case <-time.After(20 * time.Second):
			t.Fatal("the coordinator did not stop")
		}
	}
}

func spsaAppendRPC(cl pb.CoordinatorClient, ctx context.Context, base uint32, recs ...spsa.Record) (*pb.SPSAAppendResponse, error) {
	return cl.SPSAAppend(ctx, &pb.SPSAAppendRequest{Token: cluster.ControlCredential("tok"), WorkerId: "w0", Base: base,
		Records: spsa.AppendRecords(nil, recs...)})
}

// spsaReadRPC reads the coordinator's log from step from: its bytes and
// the decoded records.
func spsaReadRPC(cl pb.CoordinatorClient, ctx context.Context, from int64) ([]byte, []spsa.Record, error) {
	st, err := cl.SPSALog(ctx, &pb.SPSALogRequest{Token: cluster.ControlCredential("tok"), WorkerId: "w0", FromStep: from})
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if len(ch.Data) > cluster.SPSALogChunk {
			return nil, nil, status.Errorf(codes.Internal, "a chunk of %d bytes", len(ch.Data))
		}
		buf.Write(ch.Data)
	}
	b := bytes.Clone(buf.Bytes())
	_, recs, err := spsa.DecodeLog(&buf)
	return b, recs, err
}

// The coordinator's SPSA log is its run directory's spsa.log: appends are
// on disk when acknowledged, a retried append is acknowledged again, a gap
// or another base is refused; a coordinator restarted on the run
// directory (serve --run-dir) serves the same records, its torn last
// append cut; reads from a step send the header and the records from it,
// in bounded chunks, byte for byte the file's.
func TestSPSACoordinatorLogRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	cl, stop := coordSPSAClient(t, dir)
	if _, _, err := spsaReadRPC(cl, ctx, 0); status.Code(err) != codes.NotFound {
		t.Fatalf("read before any append: %v", err)
	}
	recs := spsaTestRecords(0, 5)
	if resp, err := spsaAppendRPC(cl, ctx, 0xbeef, recs[:3]...); err != nil || resp.NextStep != 3 || resp.PauseAfter != -1 {
		t.Fatalf("append: %v, %v", resp, err)
	}
	for range 2 { // the second is a retry
		if resp, err := spsaAppendRPC(cl, ctx, 0xbeef, recs[3:]...); err != nil || resp.NextStep != 5 {
			t.Fatalf("append: %v, %v", resp, err)
		}
	}
	for _, tc := range []struct {
		base uint32
		recs []spsa.Record
		code codes.Code
		msg  string
	}{
		{0xbeef, spsaTestRecords(6, 1), codes.FailedPrecondition, "a record for step 6, the coordinator's log"},
		{0xbeef, spsaTestRecords(6, 1)[:0:0], codes.InvalidArgument, "no records"},
		{0xbeef, []spsa.Record{{Step: 2, Entries: spsaTestRecords(3, 1)[0].Entries}}, codes.FailedPrecondition, "differs from the one"},
		{0xbeee, spsaTestRecords(5, 1), codes.FailedPrecondition, "checksum 0000beef, the records from 0000beee"},
	} {
		if _, err := spsaAppendRPC(cl, ctx, tc.base, tc.recs...); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("append %+v: %v, want %s with %q", tc.recs, err, tc.code, tc.msg)
		}
	}
	file, err := os.ReadFile(filepath.Join(dir, cluster.SPSALogName))
	if err != nil {
		t.Fatal(err)
	}
	got, all, err := spsaReadRPC(cl, ctx, 0)
	if err != nil || !reflect.DeepEqual(all, recs) || !bytes.Equal(got, file) {
		t.Fatalf("read: %d records, %v; bytes equal to the file: %v", len(all), err, bytes.Equal(got, file))
	}
	stop()

	// A crash in the middle of an append leaves a torn record.
	f, err := os.OpenFile(filepath.Join(dir, cluster.SPSALogName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(spsa.AppendRecords(nil, spsaTestRecords(5, 1)...)[:13])
	f.Close()
	cl, stop = coordSPSAClient(t, dir)
	defer stop()
	if _, all, err := spsaReadRPC(cl, ctx, 0); err != nil || !reflect.DeepEqual(all, recs) {
		t.Fatalf("after the restart: %d records, %v", len(all), err)
	}
	more := spsaTestRecords(5, 2)
	if resp, err := spsaAppendRPC(cl, ctx, 0xbeef, more...); err != nil || resp.NextStep != 7 {
		t.Fatalf("append after the restart: %v, %v", resp, err)
	}
	b, tail, err := spsaReadRPC(cl, ctx, 4)
	if err != nil || !reflect.DeepEqual(tail, append(recs[4:], more...)) {
		t.Fatalf("read from step 4: %+v, %v", tail, err)
	}
	if want := spsa.LogHeaderSize + 3*spsa.RecordSize(2); int64(len(b)) != want {
		t.Fatalf("read from step 4: %d bytes, want the header and 3 records, %d", len(b), want)
	}
	if b, tail, err := spsaReadRPC(cl, ctx, 7); err != nil || len(tail) != 0 || len(b) != spsa.LogHeaderSize {
		t.Fatalf("read at the end: %d bytes, %d records, %v", len(b), len(tail), err)
	}
}

// Bad input gets a clear error: a read past the log's end or from a
// negative step (OUT_OF_RANGE, naming the steps held), records that are
// not whole or fail their checksum (INVALID_ARGUMENT), a log damaged on
// the coordinator's disk (the coordinator does not start, naming the file
// and the byte), spsa.log naming the coordinator's own file, a non-SPSA
// coordinator (FAILED_PRECONDITION).
func TestSPSACoordinatorLogBadInput(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	cl, stop := coordSPSAClient(t, dir)
	if _, err := spsaAppendRPC(cl, ctx, 7, spsaTestRecords(0, 4)...); err != nil {
		t.Fatal(err)
	}
	for _, from := range []int64{5, 1 << 40, -1} {
		_, _, err := spsaReadRPC(cl, ctx, from)
		if status.Code(err) != codes.OutOfRange || !strings.Contains(err.Error(), "holds steps 0 to 3") {
			t.Errorf("read from step %d: %v", from, err)
		}
	}
	enc := spsa.AppendRecords(nil, spsaTestRecords(4, 1)...)
	torn := enc[:len(enc)-1]
	bad := bytes.Clone(enc)
	bad[len(bad)-1] ^= 1
	for name, data := range map[string][]byte{"torn": torn, "checksum": bad, "none": nil} {
		_, err := cl.SPSAAppend(ctx, &pb.SPSAAppendRequest{Token: cluster.ControlCredential("tok"), WorkerId: "w0", Base: 7, Records: data})
		if c := status.Code(err); c != codes.InvalidArgument && c != codes.FailedPrecondition || err == nil {
			t.Errorf("append of %s records: %v", name, err)
		}
	}
	if _, err := cl.SPSAAppend(ctx, &pb.SPSAAppendRequest{Token: "wrong", Base: 7, Records: enc}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("append with a wrong token: %v", err)
	}
	_, err := cl.SPSAAppend(ctx, &pb.SPSAAppendRequest{Token: cluster.ControlCredential("tok"), WorkerId: "w1", Base: 7, Records: enc})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not rank 0") {
		t.Errorf("append of rank 1: %v", err)
	}
	// A log damaged under a running coordinator: a joiner's read says so.
	path := filepath.Join(dir, cluster.SPSALogName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := spsa.LogHeaderSize + spsa.RecordSize(2)
	b := bytes.Clone(good)
	b[off+10] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctl := &spsaControl{client: cl, cred: cluster.ControlCredential("tok"), id: "w2", addr: "test"}
	if _, err := ctl.fetch(ctx, 0); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("record at byte %d: checksum", off)) {
		t.Errorf("a joiner's read of a damaged log: %v", err)
	}
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := ctl.fetch(ctx, 2); err != nil || len(f.recs) != 2 || f.recs[0].Step != 2 {
		t.Errorf("a joiner's read from step 2: %+v, %v", f, err)
	}
	stop()

	// One bit flipped in the second record on the coordinator's disk.
	if err = os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	job := jobtest.TinyJob()
	job.Train.Mode, job.Train.Steps = train.ModeSPSA, 100
	jobJSON, _ := cluster.JobJSON(job)
	_, err = cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: "tok", Workers: 2, TotalSteps: 100,
		Plan: cluster.PlanRequestFor(job), JobConfigJSON: jobJSON, StateDir: dir, Membership: cluster.DefaultMembershipConfig()})
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprintf("record at byte %d", off)) ||
		!errors.Is(err, spsa.ErrCorruptLog) {
		t.Fatalf("a coordinator on a corrupt log: %v", err)
	}

	// rank 0's copy named as the coordinator's own file: refused, naming both.
	job.SPSA.Log = path
	jobJSON, _ = cluster.JobJSON(job)
	_, err = cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: "tok", Workers: 2, TotalSteps: 100,
		Plan: cluster.PlanRequestFor(job), JobConfigJSON: jobJSON, StateDir: dir, Membership: cluster.DefaultMembershipConfig()})
	if err == nil || !strings.Contains(err.Error(), "spsa.log") || !strings.Contains(err.Error(), "coordinator's own log") {
		t.Fatalf("a coordinator whose log is rank 0's spsa.log: %v", err)
	}

	// Not an SPSA job: the calls are refused, saying why.
	plain := jobtest.TinyJob()
	jobJSON, _ = cluster.JobJSON(plain)
	c, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: "tok", Workers: 2, TotalSteps: 3,
		Plan: cluster.PlanRequestFor(plain), JobConfigJSON: jobJSON, StateDir: t.TempDir(), Membership: cluster.DefaultMembershipConfig()})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { c.Run(rctx); close(ran) }()
	defer func() { cancel(); <-ran }()
	conn, _, err := cluster.DialCoordinator(c.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := spsaAppendRPC(pb.NewCoordinatorClient(conn), ctx, 7, spsaTestRecords(0, 1)...); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "keeps no SPSA log") {
		t.Fatalf("append to a coordinator of a non-SPSA job: %v", err)
	}
}
