package cluster

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestLivenessBound(t *testing.T) {
	for _, c := range []struct {
		world    int
		perCore  float64
		min, max time.Duration
	}{
		{2, 1, 3 * time.Second, 4 * time.Second},           // a small job on its own cores
		{3, 1.5, 3 * time.Second, 4 * time.Second},         // 3 workers on 2 cores
		{64, 32, 25 * time.Second, 30 * time.Second},       // 64 workers on 2 cores (docs/decisions.md)
		{128, 64, 50 * time.Second, 55 * time.Second},      // 128 on 2 cores
		{1000, 1, 7 * time.Second, 9 * time.Second},        // a thousand hosts: log of the world
		{100000, 1000, 60 * time.Second, 60 * time.Second}, // capped
		{1, 0, 3 * time.Second, 3 * time.Second},           // unknown load is 1
	} {
		if got := LivenessBound(c.world, c.perCore); got < c.min || got > c.max {
			t.Errorf("LivenessBound(%d, %v) = %v, want in [%v, %v]", c.world, c.perCore, got, c.min, c.max)
		}
	}
}

// Membership changes reach a MemberWatch in the order gossip learnt them:
// a death and the refutation that follows it are never swapped.
func TestMemberEventsOrdered(t *testing.T) {
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	rec := func(kind string) func(string) {
		return func(name string) {
			mu.Lock()
			got = append(got, kind+name)
			n := len(got)
			mu.Unlock()
			if kind == "a" {
				time.Sleep(time.Millisecond) // a slow callback holds back the next event
			}
			if n == 300 {
				close(done)
			}
		}
	}
	e := newMemberEvents("self", MemberWatch{Dead: rec("d"), Alive: rec("a"), Left: rec("l")}, zerolog.Nop())
	defer close(e.done)
	var want []string
	for i := range 100 {
		name := string(rune('A' + i%26))
		e.push(memberEvent{name, 'd'})
		e.push(memberEvent{name, 'a'})
		e.push(memberEvent{name, 'l'})
		want = append(want, "d"+name, "a"+name, "l"+name)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("events not delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("events out of order:\n got %v\nwant %v", got, want)
	}
}

func TestScaleMembership(t *testing.T) {
	def := DefaultMembershipConfig()
	if got := ScaleMembership(MembershipConfig{}, 2); got != def {
		t.Errorf("2 processes per core: %+v, want the LAN timings %+v", got, def)
	}
	got := ScaleMembership(MembershipConfig{BindAddr: "10.0.0.1", ProbeTimeout: time.Second}, 32)
	if got.BindAddr != "10.0.0.1" || got.ProbeInterval != 8*def.ProbeInterval || got.ProbeTimeout != 8*time.Second ||
		got.GossipInterval != 8*def.GossipInterval || got.SuspicionMult != def.SuspicionMult {
		t.Errorf("32 processes per core: %+v", got)
	}
	if got := ScaleMembership(MembershipConfig{}, 1e6); got.ProbeInterval != 16*def.ProbeInterval {
		t.Errorf("scale not capped: %+v", got)
	}
}
