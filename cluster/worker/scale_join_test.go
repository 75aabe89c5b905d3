package worker

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	pb "github.com/moetrain/moetrain/cluster/proto"
)

// A worker opens its command stream before it joins gossip
// (runMembership; docs/planner.md#control-plane-scale): here the gossip
// join is held back until the worker's runner has started, so the job
// starts only if the stream is open without gossip. Were the stream opened
// after the gossip join, the runner would never start: the coordinator
// would drop the worker after its 1 s StreamOpenTimeout and the worker's
// stream would be refused.
func TestAgentOpensStreamBeforeGossipJoin(t *testing.T) {
	c := jobtest.NewCoordinator(t, 1, func(cfg *cluster.CoordinatorConfig) { cfg.StreamOpenTimeout = time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res cluster.Result
	done := make(chan struct{})
	go func() { res, _ = c.Run(ctx); close(done) }()

	started := make(chan struct{})
	var joinedAfterStart, seenInGossip atomic.Bool
	steps := stepper(-1, 0, false)
	runner := func(ctx context.Context, spec StartSpec) error {
		close(started)
		// The gossip join goes on beside the job: the coordinator's view
		// gets the worker while the runner runs.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if c.GossipMembers() == 2 {
				seenInGossip.Store(true)
				break
			}
		}
		return steps(ctx, spec)
	}
	err := RunAgent(ctx, AgentConfig{Coordinator: c.Addr(), Token: "tok", Host: "h", BindIP: "127.0.0.1",
		Membership: jobtest.FastGossip(), Log: zerolog.Nop(), Runner: runner,
		NewDataPlane: func(string) (DataPlane, error) { return fakeData{"127.0.0.1:1000"}, nil },
		beforeGossipJoin: func() {
			select {
			case <-started:
				joinedAfterStart.Store(true)
			case <-time.After(3 * time.Second):
			}
		}})
	<-done
	if err != nil {
		t.Fatalf("worker: %v", err)
	}
	if !joinedAfterStart.Load() {
		t.Error("the gossip join began before the job started on the worker: the stream waited for gossip")
	}
	if !seenInGossip.Load() {
		t.Error("the worker never appeared in the coordinator's gossip view")
	}
	if res.Phase != cluster.PhaseSucceeded {
		t.Errorf("job %s: %s", res.Phase, res.Reason)
	}
}

// The coordinator's join response names the job's world and up to
// JoinSeeds random members already in gossip (not itself); a worker asks
// those first, in random order, and the coordinator last.
func TestJoinHandsOutGossipSeeds(t *testing.T) {
	// memberlist's LAN timings: no member of a loaded test machine is
	// suspected (and left out of the seeds) within the test.
	c := jobtest.NewCoordinator(t, 3, func(cfg *cluster.CoordinatorConfig) {
		cfg.DrainTimeout, cfg.Membership = 100*time.Millisecond, cluster.DefaultMembershipConfig()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { _, _ = c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var members []string
	for i := range 5 {
		m, err := cluster.StartMembership(fmt.Sprintf("m%d", i), nil, "tok", cluster.DefaultMembershipConfig(), zerolog.Nop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close(100 * time.Millisecond)
		if err := m.Join(c.GossipAddr()); err != nil {
			t.Fatal(err)
		}
		members = append(members, m.Addr())
	}
	conn, _, err := cluster.DialCoordinator(c.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var hdr metadata.MD
	resp, err := pb.NewCoordinatorClient(conn).Join(ctx, &pb.JoinRequest{Token: cluster.ControlCredential("tok"), Host: "h", DataAddr: "127.0.0.1:9"},
		grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if w := joinWorld(hdr); w != 3 {
		t.Errorf("world in the join response: %d (header %v), want 3", w, hdr)
	}
	seeds := hdr.Get(cluster.MDGossipSeeds)
	if len(seeds) != cluster.JoinSeeds {
		t.Fatalf("seeds %v: want %d of %v", seeds, cluster.JoinSeeds, members)
	}
	for _, s := range seeds {
		if !slices.Contains(members, s) || s == c.GossipAddr() {
			t.Errorf("seed %s is not one of the members %v", s, members)
		}
	}
	order := gossipSeeds(resp.CoordinatorGossip, hdr)
	if len(order) != cluster.JoinSeeds+1 || order[cluster.JoinSeeds] != c.GossipAddr() {
		t.Errorf("join order %v: want the seeds, then the coordinator %s", order, c.GossipAddr())
	}
}

func TestGossipSeedsAndWorld(t *testing.T) {
	// No hints (an older coordinator): the coordinator alone.
	if got := gossipSeeds("c:1", nil); !slices.Equal(got, []string{"c:1"}) {
		t.Errorf("no hints: %v", got)
	}
	// The coordinator named among the seeds and empty values are dropped.
	hdr := metadata.Pairs(cluster.MDGossipSeeds, "a:1", cluster.MDGossipSeeds, "c:1", cluster.MDGossipSeeds, "", cluster.MDGossipSeeds, "b:1")
	firsts := map[string]bool{}
	for range 200 {
		got := gossipSeeds("c:1", hdr)
		if len(got) != 3 || got[2] != "c:1" || !slices.Contains(got, "a:1") || !slices.Contains(got, "b:1") {
			t.Fatalf("seeds %v", got)
		}
		firsts[got[0]] = true
	}
	if len(firsts) != 2 {
		t.Errorf("the seeds are not shuffled: first always %v", firsts)
	}
	for v, want := range map[string]int{"1000": 1000, "0": 0, "-3": 0, "x": 0, "": 0} {
		if got := joinWorld(metadata.Pairs(cluster.MDWorld, v)); got != want {
			t.Errorf("world %q: %d, want %d", v, got, want)
		}
	}
	if got := joinWorld(nil); got != 0 {
		t.Errorf("no world header: %d", got)
	}
}

// WorldMembership bounds memberlist's suspicion timeout
// (SuspicionMult·log10(n)·ProbeInterval, no confirmations waited for at a
// multiplier of 2) by log10(n) s and 2 s at every world size, keeps
// timings already faster, and leaves starved hosts (ScaleMembership's) and
// an unknown world alone.
func TestWorldMembership(t *testing.T) {
	def := cluster.DefaultMembershipConfig()
	suspicion := func(c cluster.MembershipConfig, n int) time.Duration {
		return time.Duration(float64(c.SuspicionMult) * max(1, math.Log10(float64(n))) * float64(c.ProbeInterval))
	}
	if got := cluster.WorldMembership(cluster.MembershipConfig{}, 0, 0); got != def {
		t.Errorf("unknown world: %+v, want the LAN timings %+v", got, def)
	}
	for _, w := range []int{1, 2, 10, 11, 100, 1000, 5000, 100000} {
		got := cluster.WorldMembership(cluster.MembershipConfig{BindAddr: "10.0.0.1"}, w, 1)
		if got.BindAddr != "10.0.0.1" || got.ProbeInterval > def.ProbeInterval/2 || got.ProbeTimeout != got.ProbeInterval/2 ||
			got.GossipInterval != def.GossipInterval/2 || got.SuspicionMult != 2 {
			t.Errorf("world %d: %+v", w, got)
		}
		n := w + 1
		s, lan := suspicion(got, n), suspicion(def, n)
		if s > lan/3 || s > 2*time.Second+time.Millisecond || s > time.Duration(max(1, math.Log10(float64(n)))*float64(time.Second))+time.Millisecond {
			t.Errorf("world %d: suspicion %v (LAN %v)", w, s, lan)
		}
		// Not slower than needed: up to 100 members the probe interval is
		// half the LAN one, beyond it keeps the suspicion at 2 s.
		if want := min(2*time.Second, time.Duration(math.Log10(float64(n))*float64(time.Second))); n >= 100 && s < want*99/100 {
			t.Errorf("world %d: suspicion %v, want about %v", w, s, want)
		}
		if n <= 100 && got.ProbeInterval != def.ProbeInterval/2 {
			t.Errorf("world %d: probe interval %v", w, got.ProbeInterval)
		}
	}
	// Timings already faster are kept.
	fast := cluster.MembershipConfig{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 20 * time.Millisecond, SuspicionMult: 1,
		GossipInterval: 30 * time.Millisecond}
	if got := cluster.WorldMembership(fast, 1000, 0); got != fast {
		t.Errorf("fast timings at 1000 workers: %+v, want them kept", got)
	}
	if got := cluster.WorldMembership(cluster.MembershipConfig{SuspicionMult: 3}, 5, 0); got.SuspicionMult != 2 {
		t.Errorf("multiplier 3 at 5 workers: %d", got.SuspicionMult)
	}
	// Many processes per core: slowed down by JobMembership, not sped up.
	if got := cluster.WorldMembership(cluster.MembershipConfig{}, 128, 64); got != def {
		t.Errorf("128 workers at 64 per core: %+v", got)
	}
	if got := cluster.JobMembership(cluster.MembershipConfig{}, 128, 64); got != cluster.ScaleMembership(def, 64) {
		t.Errorf("JobMembership at 64 per core: %+v, want %+v", got, cluster.ScaleMembership(def, 64))
	}
	if got, want := cluster.JobMembership(cluster.MembershipConfig{}, 1000, 0), cluster.WorldMembership(def, 1000, 0); got != want {
		t.Errorf("JobMembership, 1000 workers: %+v, want %+v", got, want)
	}
}

// JoinAny goes on past a member that does not answer; RandomPeers hands
// out members other than itself, at most k.
func TestJoinAnyAndRandomPeers(t *testing.T) {
	// LAN timings: no member is suspected within the test (see above).
	a, err := cluster.StartMembership("a", nil, "tok", cluster.DefaultMembershipConfig(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(100 * time.Millisecond)
	if got := a.RandomPeers(3); len(got) != 0 {
		t.Errorf("alone: peers %v", got)
	}
	// A loopback port nobody listens on: the TCP connect is refused at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	var addrs []string
	for i := range 4 {
		m, err := cluster.StartMembership("m"+strconv.Itoa(i), nil, "tok", cluster.DefaultMembershipConfig(), zerolog.Nop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close(100 * time.Millisecond)
		if err := m.JoinAny([]string{closed, a.Addr()}); err != nil {
			t.Fatalf("join past a closed port: %v", err)
		}
		addrs = append(addrs, m.Addr())
	}
	if err := a.JoinAny(nil); err == nil {
		t.Error("JoinAny with no address: no error")
	}
	if err := a.JoinAny([]string{closed}); err == nil {
		t.Errorf("JoinAny through a closed port only: no error")
	}
	// A join returns once the joiner has a's state; a merges the joiner's
	// right after answering, so its view may lag the last join a moment.
	deadline := time.Now().Add(5 * time.Second)
	for a.AliveMembers() != 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := a.AliveMembers(); n != 5 {
		t.Errorf("a sees %d members alive 5 s after the joins, want 5", n)
	}
	seen := map[string]bool{}
	for range 100 {
		got := a.RandomPeers(2)
		if len(got) != 2 || got[0] == got[1] {
			t.Fatalf("peers %v", got)
		}
		for _, p := range got {
			if !slices.Contains(addrs, p) {
				t.Fatalf("peer %s is not one of %v (or is a itself, %s)", p, addrs, a.Addr())
			}
			seen[p] = true
		}
	}
	if len(seen) != len(addrs) {
		t.Errorf("random peers over 100 draws: %v of %v", seen, addrs)
	}
}
