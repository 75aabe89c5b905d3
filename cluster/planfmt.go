package cluster

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/moetrain/moetrain/parallel"
)

// FormatPlan writes the plan as a human-readable table: a header with the mesh,
// one row per rank, then the groups of every axis of size > 1 and any
// placement warnings. The output is deterministic (golden-tested).
func FormatPlan(w io.Writer, p Plan) error {
	m := p.Mesh
	var b strings.Builder
	fmt.Fprintf(&b, "mesh: world=%d dp=%d sp=%d tp=%d ep=%d (edp=%d)\n", m.World(), m.DP, m.SP, m.TP, m.EP, m.EDPSize())
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tWORKER\tHOST\tDP\tSP\tTP\tEP\tEXPERTS\tHEADS\tSEQ-CHUNKS\tDATA-SHARD")
	for _, r := range p.Ranks {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%d,%d\t%d\n",
			r.Rank, r.Worker.ID, r.Worker.Host, r.Coord.DP, r.Coord.SP, r.Coord.TP, r.EPIndex,
			span(r.Experts), span(r.Heads), r.SeqChunks[0], r.SeqChunks[1], r.DataShard)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	sizes := map[parallel.Axis]int{parallel.AxisTP: m.TP, parallel.AxisSP: m.SP, parallel.AxisDP: m.DP,
		parallel.AxisEP: m.EP, parallel.AxisEDP: m.EDPSize()}
	for _, ax := range parallel.Axes {
		if sizes[ax] <= 1 {
			continue
		}
		var gs []string
		for _, g := range m.Groups(ax) {
			gs = append(gs, fmt.Sprint(g))
		}
		fmt.Fprintf(&b, "%s groups: %s\n", ax, strings.Join(gs, " "))
	}
	for _, wmsg := range p.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", wmsg)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func span(r [2]int) string {
	if r[1]-r[0] == 1 {
		return fmt.Sprint(r[0])
	}
	return fmt.Sprintf("%d-%d", r[0], r[1]-1)
}
