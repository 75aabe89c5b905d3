package cluster

import "github.com/moetrain/moetrain/parallel"

// LayoutProblems lists why the mesh degrees c cannot lay req out on n
// workers (the checks MakePlan refuses a request with); an empty list means
// they can. c.DP may be 0 (auto). It lets a planner enumerate candidate
// meshes with exactly the planner's own rules.
func LayoutProblems(c parallel.Config, req PlanRequest, n int) []string {
	return layoutProblems(c, req, n)
}
