package cluster

import (
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// fastGossip detects a dead member in well under a second.
func fastGossip() MembershipConfig {
	return MembershipConfig{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond,
		SuspicionMult: 2, GossipInterval: 50 * time.Millisecond}
}

// A member that vanishes without leaving is reported by gossip.
func TestMembershipDetectsDeadNode(t *testing.T) {
	gone := make(chan string, 4)
	a, err := StartMembership("a", []byte(`{"role":"a"}`), "tok", fastGossip(), zerolog.Nop(), func(n string) { gone <- n })
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(time.Second)
	b, err := StartMembership("b", nil, "tok", fastGossip(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Join(a.Addr()); err != nil {
		t.Fatal(err)
	}
	// A member with another token cannot join (different gossip key).
	c, err := StartMembership("c", nil, "other", fastGossip(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(100 * time.Millisecond)
	if err := c.Join(a.Addr()); err == nil {
		t.Errorf("a member with another job token joined")
	}
	_ = b.ml.Shutdown() // dies: no leave message
	select {
	case n := <-gone:
		if n != "b" {
			t.Fatalf("gossip reported %q, want b", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dead member not detected within 10 s")
	}
}

func TestGossipKey(t *testing.T) {
	k1, k2 := GossipKey("a"), GossipKey("b")
	if len(k1) != 32 || string(k1) == string(k2) || string(GossipKey("a")) != string(k1) {
		t.Fatalf("keys %x %x", k1, k2)
	}
}
