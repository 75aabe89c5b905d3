package parallel

import (
	"fmt"
)

// Mesh is the resolved layout of a job's ranks (docs/mesh.md):
//
//	world = DP × SP × TP,  rank = (dp·SP + sp)·TP + tp
//
// TP is innermost (fastest links), then SP, then DP. EP divides DP·SP: the
// DP·SP plane at a fixed tp is cut into groups of EP consecutive plane
// indices p = dp·SP + sp; each EP group holds all experts, and the ranks that
// hold the same experts across EP groups form the expert-data-parallel group
// (size DP·SP/EP). A Mesh is a plain value: pass it around, never store it in
// a global, so several meshes can run as goroutines in one test.
type Mesh struct {
	DP int `json:"dp"`
	SP int `json:"sp"`
	TP int `json:"tp"`
	EP int `json:"ep"`
}

// Coord is a rank's position on the three mesh axes.
type Coord struct {
	DP int `json:"dp"`
	SP int `json:"sp"`
	TP int `json:"tp"`
}

// Axis names one grouping of ranks.
type Axis int

const (
	// AxisTP groups ranks that differ only in tp.
	AxisTP Axis = iota
	// AxisSP groups ranks that differ only in sp.
	AxisSP
	// AxisDP groups ranks that differ only in dp.
	AxisDP
	// AxisEP groups EP consecutive plane indices at a fixed tp.
	AxisEP
	// AxisEDP groups the replicas of the same experts (same tp, same position
	// inside their EP group) across EP groups.
	AxisEDP
	// AxisPlane groups the DP·SP plane at a fixed tp: the ranks that hold
	// different tokens of a step. Dense gradients (and the loss and routing
	// statistics) are summed over it.
	AxisPlane
)

// Axes lists every axis in a stable order.
var Axes = []Axis{AxisTP, AxisSP, AxisDP, AxisEP, AxisEDP, AxisPlane}

func (a Axis) String() string {
	switch a {
	case AxisTP:
		return "tp"
	case AxisSP:
		return "sp"
	case AxisDP:
		return "dp"
	case AxisEP:
		return "ep"
	case AxisEDP:
		return "edp"
	case AxisPlane:
		return "plane"
	}
	return fmt.Sprintf("axis(%d)", int(a))
}

// NewMesh resolves cfg against a world of the given size: DP = 0 means
// world/(SP·TP). It returns an error naming the conflicting numbers when the
// degrees do not multiply to world or EP does not divide DP·SP.
func NewMesh(cfg Config, world int) (Mesh, error) {
	if world < 1 {
		return Mesh{}, fmt.Errorf("mesh: world size %d: need at least 1 rank", world)
	}
	if cfg.TP < 1 || cfg.SP < 1 || cfg.EP < 1 || cfg.DP < 0 {
		return Mesh{}, fmt.Errorf("mesh: degrees dp=%d tp=%d sp=%d ep=%d: tp, sp and ep must be ≥ 1 and dp ≥ 0 (0 = auto)",
			cfg.DP, cfg.TP, cfg.SP, cfg.EP)
	}
	m := Mesh{DP: cfg.DP, SP: cfg.SP, TP: cfg.TP, EP: cfg.EP}
	if m.DP == 0 {
		if world%(cfg.SP*cfg.TP) != 0 {
			return Mesh{}, fmt.Errorf("mesh: dp=auto: %d ranks are not divisible by sp=%d × tp=%d = %d",
				world, cfg.SP, cfg.TP, cfg.SP*cfg.TP)
		}
		m.DP = world / (cfg.SP * cfg.TP)
	}
	if err := m.Validate(); err != nil {
		return Mesh{}, err
	}
	if m.World() != world {
		return Mesh{}, fmt.Errorf("mesh: dp=%d × sp=%d × tp=%d = %d ranks, but the world has %d",
			m.DP, m.SP, m.TP, m.World(), world)
	}
	return m, nil
}

// Validate checks that every degree is ≥ 1 and EP divides DP·SP.
func (m Mesh) Validate() error {
	if m.DP < 1 || m.SP < 1 || m.TP < 1 || m.EP < 1 {
		return fmt.Errorf("mesh: degrees dp=%d sp=%d tp=%d ep=%d must all be ≥ 1", m.DP, m.SP, m.TP, m.EP)
	}
	if (m.DP*m.SP)%m.EP != 0 {
		return fmt.Errorf("mesh: ep=%d does not divide dp=%d × sp=%d = %d", m.EP, m.DP, m.SP, m.DP*m.SP)
	}
	return nil
}

// World is the number of ranks, DP·SP·TP.
func (m Mesh) World() int { return m.DP * m.SP * m.TP }

// Rank maps a coordinate to its rank. The coordinate must be inside the mesh.
func (m Mesh) Rank(c Coord) int { return (c.DP*m.SP+c.SP)*m.TP + c.TP }

// Coord maps a rank in [0, World()) to its coordinate.
func (m Mesh) Coord(rank int) Coord {
	return Coord{TP: rank % m.TP, SP: (rank / m.TP) % m.SP, DP: rank / (m.TP * m.SP)}
}

// plane is the rank's index in the DP·SP plane, dp·SP + sp.
func (m Mesh) plane(rank int) int { return rank / m.TP }

// EPIndex is the rank's position inside its EP group, in [0, EP); it selects
// which experts the rank owns.
func (m Mesh) EPIndex(rank int) int { return m.plane(rank) % m.EP }

// EDPSize is the size of the expert-data-parallel group, DP·SP/EP.
func (m Mesh) EDPSize() int { return m.DP * m.SP / m.EP }

// Group returns the ranks of rank's group along axis, in increasing order.
// The rank's own index in that list is its rank inside the group.
func (m Mesh) Group(axis Axis, rank int) []int {
	c := m.Coord(rank)
	var out []int
	switch axis {
	case AxisTP:
		for t := 0; t < m.TP; t++ {
			out = append(out, m.Rank(Coord{DP: c.DP, SP: c.SP, TP: t}))
		}
	case AxisSP:
		for s := 0; s < m.SP; s++ {
			out = append(out, m.Rank(Coord{DP: c.DP, SP: s, TP: c.TP}))
		}
	case AxisDP:
		for d := 0; d < m.DP; d++ {
			out = append(out, m.Rank(Coord{DP: d, SP: c.SP, TP: c.TP}))
		}
	case AxisEP:
		first := m.plane(rank) / m.EP * m.EP
		for p := first; p < first+m.EP; p++ {
			out = append(out, p*m.TP+c.TP)
		}
	case AxisEDP:
		for p := m.EPIndex(rank); p < m.DP*m.SP; p += m.EP {
			out = append(out, p*m.TP+c.TP)
		}
	case AxisPlane:
		for p := 0; p < m.DP*m.SP; p++ {
			out = append(out, p*m.TP+c.TP)
		}
	}
	return out
}

// Groups returns every group along axis, each in increasing rank order, the
// groups ordered by their smallest rank. Every rank appears in exactly one.
func (m Mesh) Groups(axis Axis) [][]int {
	seen := make([]bool, m.World())
	var out [][]int
	for r := 0; r < m.World(); r++ {
		if seen[r] {
			continue
		}
		g := m.Group(axis, r)
		for _, x := range g {
			seen[x] = true
		}
		out = append(out, g)
	}
	return out
}

// String formats the degrees as "dp=2 sp=1 tp=2 ep=1".
func (m Mesh) String() string {
	return fmt.Sprintf("dp=%d sp=%d tp=%d ep=%d", m.DP, m.SP, m.TP, m.EP)
}

// ZigzagChunks returns the two sequence chunks (of 2·SP) that sequence-parallel
// rank sp holds: i and 2·SP−1−i, which balances causal attention work.
func ZigzagChunks(sp, spSize int) [2]int { return [2]int{sp, 2*spSize - 1 - sp} }
