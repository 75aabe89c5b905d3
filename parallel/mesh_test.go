package parallel

import (
	"reflect"
	"sort"
	"strings"
	"testing"
)

func TestMeshRankCoordRoundTrip(t *testing.T) {
	for _, m := range []Mesh{
		{1, 1, 1, 1}, {2, 1, 1, 2}, {2, 3, 2, 3}, {3, 2, 5, 1}, {4, 2, 2, 8}, {1, 1, 7, 1},
	} {
		if err := m.Validate(); err != nil {
			t.Fatalf("%v: %v", m, err)
		}
		for r := 0; r < m.World(); r++ {
			c := m.Coord(r)
			if want := (c.DP*m.SP+c.SP)*m.TP + c.TP; want != r || m.Rank(c) != r {
				t.Fatalf("%v: rank %d → %+v → %d", m, r, c, m.Rank(c))
			}
			if c.DP >= m.DP || c.SP >= m.SP || c.TP >= m.TP {
				t.Fatalf("%v: rank %d coord %+v out of range", m, r, c)
			}
		}
	}
}

// Every axis partitions the world; group sizes are the axis degree; every
// member of a group agrees on the group.
func TestMeshGroupsPartition(t *testing.T) {
	for _, m := range []Mesh{{2, 3, 2, 3}, {4, 2, 2, 8}, {4, 1, 1, 2}, {3, 2, 1, 6}} {
		sizes := map[Axis]int{AxisTP: m.TP, AxisSP: m.SP, AxisDP: m.DP, AxisEP: m.EP, AxisEDP: m.EDPSize(), AxisPlane: m.DP * m.SP}
		for _, ax := range Axes {
			var all []int
			for _, g := range m.Groups(ax) {
				if len(g) != sizes[ax] {
					t.Fatalf("%v %v: group %v has size %d, want %d", m, ax, g, len(g), sizes[ax])
				}
				for _, r := range g {
					if !reflect.DeepEqual(m.Group(ax, r), g) {
						t.Fatalf("%v %v: rank %d sees %v, group is %v", m, ax, r, m.Group(ax, r), g)
					}
				}
				all = append(all, g...)
			}
			sort.Ints(all)
			for i, r := range all {
				if i != r {
					t.Fatalf("%v %v: groups do not partition the world: %v", m, ax, all)
				}
			}
		}
	}
}

func TestMeshGroupsExample(t *testing.T) {
	// dp=2 sp=2 tp=2 ep=2: ranks 0..7; plane index p = rank/2.
	m := Mesh{DP: 2, SP: 2, TP: 2, EP: 2}
	cases := []struct {
		ax   Axis
		want [][]int
	}{
		{AxisTP, [][]int{{0, 1}, {2, 3}, {4, 5}, {6, 7}}},
		{AxisSP, [][]int{{0, 2}, {1, 3}, {4, 6}, {5, 7}}},
		{AxisDP, [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}}},
		{AxisEP, [][]int{{0, 2}, {1, 3}, {4, 6}, {5, 7}}},
		{AxisEDP, [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}}},
	}
	for _, c := range cases {
		if got := m.Groups(c.ax); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v groups = %v, want %v", c.ax, got, c.want)
		}
	}
	// EP=4 over a DP·SP plane of 4: one EP group per tp, EDP of size 1.
	m.EP = 4
	if got, want := m.Group(AxisEP, 3), []int{1, 3, 5, 7}; !reflect.DeepEqual(got, want) {
		t.Errorf("ep=4 group of rank 3 = %v, want %v", got, want)
	}
	if got := m.Group(AxisEDP, 3); !reflect.DeepEqual(got, []int{3}) {
		t.Errorf("ep=4 edp group of rank 3 = %v, want [3]", got)
	}
}

func TestNewMesh(t *testing.T) {
	cases := []struct {
		cfg   Config
		world int
		want  Mesh
		err   string
	}{
		{Config{DP: 0, TP: 1, EP: 1, SP: 1}, 4, Mesh{4, 1, 1, 1}, ""},
		{Config{DP: 0, TP: 2, EP: 2, SP: 1}, 8, Mesh{4, 1, 2, 2}, ""},
		{Config{DP: 2, TP: 2, EP: 1, SP: 2}, 8, Mesh{2, 2, 2, 1}, ""},
		{Config{DP: 0, TP: 2, EP: 1, SP: 1}, 3, Mesh{}, "3 ranks are not divisible by sp=1 × tp=2"},
		{Config{DP: 2, TP: 1, EP: 1, SP: 1}, 3, Mesh{}, "dp=2 × sp=1 × tp=1 = 2 ranks, but the world has 3"},
		{Config{DP: 0, TP: 1, EP: 3, SP: 1}, 4, Mesh{}, "ep=3 does not divide dp=4 × sp=1 = 4"},
		{Config{DP: 0, TP: 0, EP: 1, SP: 1}, 4, Mesh{}, "must be ≥ 1"},
		{Config{DP: 1, TP: 1, EP: 1, SP: 1}, 0, Mesh{}, "need at least 1 rank"},
	}
	for _, c := range cases {
		got, err := NewMesh(c.cfg, c.world)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("NewMesh(%+v, %d) error = %v, want it to contain %q", c.cfg, c.world, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("NewMesh(%+v, %d) = %+v, %v; want %+v", c.cfg, c.world, got, err, c.want)
		}
	}
}

func TestZigzagChunks(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 4; i++ {
		c := ZigzagChunks(i, 4)
		seen[c[0]], seen[c[1]] = true, true
		if c[0]+c[1] != 7 {
			t.Fatalf("rank %d chunks %v do not pair to 2·SP−1", i, c)
		}
	}
	if len(seen) != 8 {
		t.Fatalf("chunks do not cover 0..7: %v", seen)
	}
}
