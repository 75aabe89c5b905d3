package collective

import (
	"context"
	"slices"
)

// Hierarchical all-to-all (docs/collectives.md#hierarchical-all-to-all):
// when a communicator's members span several hosts, the blocks between
// members of one host go directly, and those between hosts take three
// hops: each member hands its blocks for another host to its own host's
// leader (its first member), the leaders exchange one message per pair of
// hosts, and each leader hands every local member the blocks it got for
// it. A host pair's traffic then crosses the network as one message on
// one connection instead of L·L' messages on as many connections, at the
// price of two copies through the leader over shared memory.

// hostLister is implemented by transports that know the host of every
// rank (TCP with TCPConfig.Hosts).
type hostLister interface{ hosts() []string }

// hostGroups groups c's members by host: groups[g] lists comm ranks in
// rank order, groups ordered by their first member; of[m] is m's group.
// ok is false when the hosts are unknown (for any member), all one, or
// every host has a single member (hierarchy would add hops for nothing).
func (c *Comm) hostGroups() (groups [][]int, of []int, ok bool) {
	hosts := c.cfg.Hosts
	if hosts == nil {
		if hl, isHL := c.t.(hostLister); isHL {
			hosts = hl.hosts()
		}
	}
	if !c.cfg.HierAllToAll || hosts == nil {
		return nil, nil, false
	}
	index := map[string]int{}
	of = make([]int, len(c.ranks))
	several := false
	for m, w := range c.ranks {
		if w >= len(hosts) || hosts[w] == "" {
			return nil, nil, false
		}
		g, seen := index[hosts[w]]
		if !seen {
			g = len(groups)
			index[hosts[w]] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], m)
		several = several || len(groups[g]) > 1
		of[m] = g
	}
	return groups, of, len(groups) > 1 && several
}

// Steps of a hierarchical all-to-all's messages: the direct blocks between
// members of one host, a member's blocks for host g to its leader
// (hierGather+g), a leader's message to another host's leader, and a
// leader's message to a member of its host.
const (
	hierDirect  = 0
	hierGather  = 1 << 20
	hierLeaders = 2 << 20
	hierScatter = 3 << 20
)

// allToAllHier is AllToAll (uniform blocks of b elements) over host groups
// (see hostGroups). Every message carries the op's total count.
func allToAllHier(ctx context.Context, o *opRun, send, recv []float32, b int, groups [][]int, of []int) (err error) {
	r := o.c.rank
	mine := groups[of[r]]
	leader := mine[0]
	li := slices.Index(mine, r)
	block := func(buf []float32, m int) []float32 { return buf[m*b : (m+1)*b] }
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var posted []Pending
	post := func(peer int, step uint32, dst []float32) Pending {
		p := o.post(peer, step, f32bytes(dst))
		posted = append(posted, p)
		return p
	}
	defer func() {
		if err != nil {
			for _, p := range posted {
				o.withdraw(p)
			}
			clear(recv)
		}
	}()
	// Blocks within the host go directly.
	direct := make([]Pending, len(mine))
	for i, m := range mine {
		if m != r {
			direct[i] = post(m, hierDirect, block(recv, m))
		}
	}
	remote := len(o.c.ranks) - len(mine)
	var (
		gathered [][]float32 // leader: by group, [local member][member of that group] blocks
		fromLdr  [][]float32 // leader: by group, [member of that group][local member] blocks
		gathers  [][]Pending // leader: by group, by local member
		leaders  []Pending   // leader: by group
		scatter  Pending     // member: the leader's message
		scratch  []float32   // member: where it lands
	)
	if r == leader {
		gathered = make([][]float32, len(groups))
		fromLdr = make([][]float32, len(groups))
		gathers = make([][]Pending, len(groups))
		leaders = make([]Pending, len(groups))
		for g, members := range groups {
			if g == of[r] {
				continue
			}
			gathered[g] = make([]float32, len(mine)*len(members)*b)
			fromLdr[g] = make([]float32, len(members)*len(mine)*b)
			gathers[g] = make([]Pending, len(mine))
			for i, m := range mine[1:] {
				gathers[g][i+1] = post(m, hierGather+uint32(g), gathered[g][(i+1)*len(members)*b:(i+2)*len(members)*b])
			}
			leaders[g] = post(members[0], hierLeaders, fromLdr[g])
		}
	} else {
		scratch = make([]float32, remote*b)
		scatter = post(leader, hierScatter, scratch)
	}
	copy(block(recv, r), block(send, r))
	for _, m := range mine {
		if m != r {
			if err := o.send(ctx, m, hierDirect, f32bytes(block(send, m))); err != nil {
				return err
			}
		}
	}
	if r != leader {
		// This member's blocks for each other host, to the leader.
		for g, members := range groups {
			if g == of[r] {
				continue
			}
			parts := make([][]byte, len(members))
			for i, d := range members {
				parts[i] = f32bytes(block(send, d))
			}
			if err := o.send(ctx, leader, hierGather+uint32(g), parts...); err != nil {
				return err
			}
		}
		if err := o.wait(ctx, leader, scatter); err != nil {
			return err
		}
		off := 0
		for g, members := range groups {
			if g == of[r] {
				continue
			}
			for _, s := range members {
				copy(block(recv, s), scratch[off:off+b])
				off += b
			}
		}
		return waitDirect(ctx, o, mine, direct)
	}
	// Leader: gather, exchange with the other leaders, hand out.
	for g, members := range groups {
		if g == of[r] {
			continue
		}
		for j, d := range members {
			copy(gathered[g][j*b:(j+1)*b], block(send, d))
		}
		for i, m := range mine[1:] {
			if err := o.wait(ctx, m, gathers[g][i+1]); err != nil {
				return err
			}
		}
		if err := o.send(ctx, members[0], hierLeaders, f32bytes(gathered[g])); err != nil {
			return err
		}
	}
	for g, members := range groups {
		if g == of[r] {
			continue
		}
		if err := o.wait(ctx, members[0], leaders[g]); err != nil {
			return err
		}
		// fromLdr[g] holds [member s of g][local member i] blocks.
		for j, s := range members {
			copy(block(recv, s), fromLdr[g][(j*len(mine)+li)*b:(j*len(mine)+li+1)*b])
		}
	}
	for i, d := range mine[1:] {
		parts := make([][]byte, 0, remote)
		for g, members := range groups {
			if g == of[r] {
				continue
			}
			for j := range members {
				k := j*len(mine) + i + 1
				parts = append(parts, f32bytes(fromLdr[g][k*b:(k+1)*b]))
			}
		}
		if err := o.send(ctx, d, hierScatter, parts...); err != nil {
			return err
		}
	}
	return waitDirect(ctx, o, mine, direct)
}

// waitDirect waits for the direct blocks from the members of this host.
func waitDirect(ctx context.Context, o *opRun, mine []int, direct []Pending) error {
	for i, m := range mine {
		if direct[i] != nil {
			if err := o.wait(ctx, m, direct[i]); err != nil {
				return err
			}
		}
	}
	return nil
}
