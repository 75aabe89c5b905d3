package collective

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// hierLayouts are host assignments of ranks: blocks, interleaved, uneven,
// three hosts, single-member hosts among larger ones.
var hierLayouts = [][]string{
	{"a", "a", "b", "b"},
	{"a", "b", "a", "b"},
	{"a", "a", "a", "b"},
	{"a", "b", "c", "a", "b", "c", "a"},
	{"x", "y", "y", "z", "y"},
}

// a2aExpect is what member r receives from member s at element i of a
// block in checkAllToAll's pattern.
func a2aValue(from, to, i int) float32 { return float32(from*1000000 + to*1000 + i%1000) }

// checkAllToAll runs AllToAll with blocks of b elements on c and checks
// every element.
func checkAllToAll(ctx context.Context, c *Comm, b int) error {
	n, r := c.Size(), c.Rank()
	send, recv := make([]float32, n*b), make([]float32, n*b)
	for d := range n {
		for i := range b {
			send[d*b+i] = a2aValue(r, d, i)
		}
	}
	if err := c.AllToAll(ctx, send, recv); err != nil {
		return err
	}
	for s := range n {
		for i := range b {
			if got, want := recv[s*b+i], a2aValue(s, r, i); got != want {
				return fmt.Errorf("alltoall n=%d b=%d: from %d element %d = %v, want %v", n, b, s, i, got, want)
			}
		}
	}
	return nil
}

// TestHierAllToAll: over every layout, the hierarchical all-to-all
// delivers every block where the flat one does (TestShmHierAllToAll: over
// TCP and shared memory).
func TestHierAllToAll(t *testing.T) {
	for _, hosts := range hierLayouts {
		n := len(hosts)
		t.Run(fmt.Sprintf("inproc/%s", strings.Join(hosts, "")), func(t *testing.T) {
			ts := NewInProcess(n)
			defer closeAllT(ts)
			comms := worlds(ts, Config{Hosts: hosts, HierAllToAll: true})
			if _, _, ok := comms[0].groupsByHost(); !ok {
				t.Fatal("layout not taken as several hosts")
			}
			ctx := testCtx(t, 10*time.Second)
			for _, b := range []int{0, 1, 33, 4099} {
				mustAll(t, runRanks(comms, func(c *Comm) error { return checkAllToAll(ctx, c, b) }))
			}
		})
	}
}

// TestHierGroups: when the hierarchy applies.
func TestHierGroups(t *testing.T) {
	cases := []struct {
		hosts []string
		hier  bool
		want  bool
	}{
		{nil, true, false},
		{[]string{"a", "a", "a"}, true, false},
		{[]string{"a", "b", "c"}, true, false},
		{[]string{"a", "", "b", "b"}, true, false},
		{[]string{"a", "a", "b"}, true, true},
		{[]string{"a", "a", "b"}, false, false},
	}
	for _, c := range cases {
		n := 3
		if c.hosts != nil {
			n = len(c.hosts)
		}
		ts := NewInProcess(n)
		cm := NewWorldConfig(ts[0], Config{Hosts: c.hosts, HierAllToAll: c.hier})
		if _, _, ok := cm.groupsByHost(); ok != c.want {
			t.Errorf("hosts %q HierAllToAll %v: hierarchical %v, want %v", c.hosts, c.hier, ok, c.want)
		}
		closeAllT(ts)
	}
}

// TestHierAllToAllKilledPeer: a member (leader or not) that dies fails
// the others with an error naming a rank, before the deadline.
func TestHierAllToAllKilledPeer(t *testing.T) {
	for _, dead := range []int{0, 1, 2} {
		t.Run(fmt.Sprintf("dead=%d", dead), func(t *testing.T) {
			f := NewFaults()
			hosts := []string{"a", "a", "b", "b"}
			ts := NewInProcess(4, WithFaults(f))
			defer closeAllT(ts)
			f.Kill(dead)
			comms := worlds(ts, Config{Hosts: hosts, HierAllToAll: true})
			ctx := testCtx(t, 5*time.Second)
			errs := runRanks(comms, func(c *Comm) error {
				if c.Rank() == dead {
					return nil
				}
				return checkAllToAll(ctx, c, 1000)
			})
			for r, err := range errs {
				if r == dead {
					continue
				}
				if err == nil {
					t.Errorf("rank %d: succeeded without rank %d", r, dead)
				} else if errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("rank %d: waited for the deadline: %v", r, err)
				}
			}
		})
	}
}

// TestHierAllToAllDesync: ranks that disagree about the block size fail
// with an error, not wrong numbers or a hang past the deadline.
func TestHierAllToAllDesync(t *testing.T) {
	ts := NewInProcess(4)
	defer closeAllT(ts)
	comms := worlds(ts, Config{Hosts: []string{"a", "b", "a", "b"}, HierAllToAll: true})
	ctx := testCtx(t, 5*time.Second)
	errs := runRanks(comms, func(c *Comm) error {
		b := 100
		if c.Rank() == 3 {
			b = 101
		}
		return checkAllToAll(ctx, c, b)
	})
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("a block-size disagreement went unnoticed")
	}
}
