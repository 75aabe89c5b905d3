package worker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/train"
)

// The data plane's limits come from the plan: a data-parallel job's frames
// are ring segments, so its payload limit is far below the transport's 4 GiB
// default; an expert-parallel job's largest all-to-all-v block (every slot
// of a rank's batch for one member) goes through a mesh connected with
// them; a frame beyond the limit fails the link, naming the sender.
func TestJobDataPlaneLimits(t *testing.T) {
	job := train.DefaultJobConfig()
	cc := collective.Config{Timeout: CollectiveTimeout}
	dpOnly := JobDataPlaneLimits(job, parallel.Mesh{DP: 4, SP: 1, TP: 1, EP: 1}, cc)
	if dpOnly.MaxPayload > 1<<20 || dpOnly.MaxPayload < uint64(cc.MaxSegmentFrame()) {
		t.Fatalf("data-parallel job: MaxPayload %d, want a segment (%d) to 1 MiB", dpOnly.MaxPayload, cc.MaxSegmentFrame())
	}
	mesh := parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 2}
	lim := JobDataPlaneLimits(job, mesh, cc)
	block := job.MaxBatchTokens() * job.Model.TopK * job.Model.DModel // floats
	if lim.MaxPayload < uint64(4*block) || lim.MaxBuffered < 4*lim.MaxPayload {
		t.Fatalf("expert-parallel job: limits %+v, want a payload of at least %d and room for 4", lim, 4*block)
	}

	planes := make([]DataPlane, 2)
	addrs := make([]string, 2)
	for r := range planes {
		dp, err := NewTCPDataPlane("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		planes[r], addrs[r] = dp, dp.Addr()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ts := make([]collective.Transport, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range planes {
		wg.Go(func() {
			ts[r], errs[r] = planes[r].Connect(ctx, r, addrs, "limits", lim)
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		defer ts[r].Close()
	}
	// Rank 1 sends rank 0 the largest block; rank 0 sends nothing.
	for r := range ts {
		wg.Go(func() {
			c := collective.NewWorldConfig(ts[r], cc)
			if r == 1 {
				errs[r] = c.AllToAllV(ctx, make([]float32, block), []int{block, 0}, nil, []int{0, 0})
			} else {
				errs[r] = c.AllToAllV(ctx, nil, []int{0, 0}, make([]float32, block), []int{0, block})
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: all-to-all-v of the largest block: %v", r, err)
		}
	}
	// One frame past the limit fails the link, naming rank 1.
	big := make([]byte, lim.MaxPayload+4)
	h := collective.Header{Op: collective.OpSendRecv, Tag: collective.Tag{Group: 3, Seq: 1}, Count: 1}
	go func() { _ = ts[1].Send(ctx, 0, h, big) }()
	_, err := ts[0].Recv(ctx, 1, h, make([]byte, len(big)))
	var pe *collective.PeerError
	if !errors.As(err, &pe) || pe.Peer != 1 || !errors.Is(err, collective.ErrBadFrame) {
		t.Fatalf("a frame past MaxPayload: want a bad-frame PeerError for rank 1, got %v", err)
	}
}

// frameRecorder watches the frames of an in-process world: the largest
// payload sent, and the most bytes one rank sent another ahead of that
// rank's receive for them (what a TCP transport keeps for the peer).
type frameRecorder struct {
	mu       sync.Mutex
	posted   map[frameKey]bool // receives posted before their frame
	early    map[frameKey]int  // frames sent before their receive
	held     map[[2]int]int    // bytes early, per (from, to)
	maxFrame int
	maxHeld  int
}

type frameKey struct {
	from, to int
	tag      collective.Tag
}

func (r *frameRecorder) sent(k frameKey, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.maxFrame = max(r.maxFrame, n)
	if r.posted[k] {
		delete(r.posted, k)
		return
	}
	r.early[k] = n
	pair := [2]int{k.from, k.to}
	r.held[pair] += n
	r.maxHeld = max(r.maxHeld, r.held[pair])
}

func (r *frameRecorder) post(k frameKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n, ok := r.early[k]; ok {
		delete(r.early, k)
		r.held[[2]int{k.from, k.to}] -= n
		return
	}
	r.posted[k] = true
}

// partsLen is the payload length of a frame sent as parts.
func partsLen(parts [][]byte) int {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	return n
}

// recTransport reports rank's frames and receives to rec.
type recTransport struct {
	collective.Transport
	rec *frameRecorder
}

func (t recTransport) Send(ctx context.Context, peer int, h collective.Header, parts ...[]byte) error {
	n := partsLen(parts)
	if h.Op != collective.OpAbort {
		t.rec.sent(frameKey{t.Rank(), peer, h.Tag}, n)
	}
	return t.Transport.Send(ctx, peer, h, parts...)
}

func (t recTransport) Recv(ctx context.Context, peer int, want collective.Header, dst []byte) (collective.Header, error) {
	t.rec.post(frameKey{peer, t.Rank(), want.Tag})
	return t.Transport.Recv(ctx, peer, want, dst)
}

func (t recTransport) Post(peer int, want collective.Header, dst []byte) collective.Pending {
	t.rec.post(frameKey{peer, t.Rank(), want.Tag})
	return t.Transport.Post(peer, want, dst)
}

// The bounds behind JobDataPlaneLimits hold for real training: over a few
// steps of meshes with every kind of parallelism, with a model whose
// all-to-all and sequence blocks are larger than a ring segment, no frame
// is larger than the plan's largest message and no rank sends another more
// bytes ahead of its receives than one step's bound.
func TestPlanBoundsCoverTraining(t *testing.T) {
	job := train.DefaultJobConfig()
	job.Model.DModel, job.Model.Layers, job.Model.Heads, job.Model.SeqLen = 128, 2, 4, 128
	job.Model.Experts, job.Model.ExpertHidden, job.Model.TopK = 4, 64, 2
	job.Data.Mode, job.Data.SeqLen, job.Data.BatchSize = sampling.ModeRandom, 128, 16
	job.Data.Vocab = job.Model.Vocab
	job.Train.Threads = 1
	cc := collective.Config{Timeout: 30 * time.Second}
	for _, tc := range []struct {
		mesh parallel.Mesh
		alg  string
	}{
		{parallel.Mesh{DP: 2, SP: 1, TP: 1, EP: 2}, "tokenring"},
		{parallel.Mesh{DP: 1, SP: 2, TP: 2, EP: 1}, "tokenring"},
		{parallel.Mesh{DP: 1, SP: 2, TP: 1, EP: 1}, "ring"},
		{parallel.Mesh{DP: 2, SP: 2, TP: 1, EP: 4}, "tokenring"},
	} {
		mesh := tc.mesh
		t.Run(mesh.String()+"/"+tc.alg, func(t *testing.T) {
			job := job
			job.Mesh = parallel.Config{DP: mesh.DP, SP: mesh.SP, TP: mesh.TP, EP: mesh.EP, SPAlgorithm: tc.alg}
			if err := job.Validate(); err != nil {
				t.Fatal(err)
			}
			data, err := sampling.Open(job.DataConfig(), 1)
			if err != nil {
				t.Fatal(err)
			}
			rec := &frameRecorder{posted: map[frameKey]bool{}, early: map[frameKey]int{}, held: map[[2]int]int{}}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs := testkit.OnRanks(mesh.World(), func(r int, tr collective.Transport) error {
				world := collective.NewWorldConfig(recTransport{tr, rec}, cc)
				mr, err := train.NewMeshRank(job, mesh, r, world, zerolog.Nop())
				if err != nil {
					return err
				}
				s, err := data.Sampler(mesh.Coord(r).DP, mesh.DP)
				if err != nil {
					return err
				}
				for range 2 {
					b, err := s.Next()
					if err != nil {
						return err
					}
					if _, err := mr.Step(ctx, b); err != nil {
						return err
					}
				}
				return nil
			})
			for r, err := range errs {
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
			}
			largest, step := planBounds(job, mesh, cc)
			t.Logf("largest frame %d (bound %.0f), most bytes ahead of receives %d (bound %.0f)", rec.maxFrame, largest, rec.maxHeld, step)
			if rec.maxFrame <= cc.MaxSegmentFrame() {
				t.Fatalf("no frame larger than a segment (%d): the model is too small to test the bound", rec.maxFrame)
			}
			if float64(rec.maxFrame) > largest || float64(rec.maxHeld) > step {
				t.Fatalf("training exceeded the plan's bounds")
			}
		})
	}
}

// connectPair connects rank 0 through a TCP data plane with job token
// token and rank 1 with collective.DialMesh given key as is (what a peer
// holding key, whatever it derived it from, can do); it returns rank 1's
// error.
func connectPair(t *testing.T, token, key string) error {
	t.Helper()
	dp, err := NewTCPDataPlane("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ln, err := collective.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addrs := []string{dp.Addr(), ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		if tr, err := dp.Connect(ctx, 0, addrs, token, DataPlaneLimits{}); err == nil {
			tr.Close()
		}
	})
	tr, err := collective.DialMesh(ctx, ln, collective.TCPConfig{Rank: 1, Addrs: addrs, Token: key})
	if err == nil {
		tr.Close()
	} else {
		cancel() // rank 0 keeps waiting for a rank it refused
	}
	wg.Wait()
	return err
}

// The data plane's handshake key is DataPlaneKey of the job token: a peer
// holding it connects; one holding the job token itself (say, from a
// captured cleartext control plane of an older version), the control
// credential, the gossip key or another job's key is refused.
func TestDataPlaneKeyRefusals(t *testing.T) {
	tok := "job-token"
	if err := connectPair(t, tok, cluster.DataPlaneKey(tok)); err != nil {
		t.Fatalf("the data-plane key: %v", err)
	}
	for name, key := range map[string]string{"the job token": tok, "the control credential": cluster.ControlCredential(tok),
		"the gossip key": string(cluster.GossipKey(tok)), "another job's key": cluster.DataPlaneKey("other")} {
		err := connectPair(t, tok, key)
		if !errors.Is(err, collective.ErrRefused) {
			t.Errorf("%s: %v, want a handshake refusal", name, err)
		}
	}
}
