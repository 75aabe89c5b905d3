package metrics

// CurveCursor is the rule by which a job's loss curve grows, shared by
// summary.json's curve and the dashboard's so that the two agree point for
// point. The job's step is its slowest rank's, and its loss that rank's.
//
//   - A training point is added when the job's step passes the largest
//     step of any point so far (a recovery that resumes from an earlier
//     step adds nothing until the job is past where it was).
//   - A validation point is added once the job's step has reached the
//     validation's step, so that the loss recorded beside it is that
//     step's and not a slower rank's older one; or when the job has ended
//     (the ranks that were behind will not report again).
type CurveCursor struct {
	lastStep int // the largest step of any point
	lastVal  int // the newest validation point's step; -1: none
}

// NewCurveCursor returns a cursor for an empty curve.
func NewCurveCursor() CurveCursor { return CurveCursor{lastVal: -1} }

// Advance reports which points a status adds (first the training point,
// then the validation point) and moves past them.
func (c *CurveCursor) Advance(step int, hasVal bool, valStep int, ended bool) (train, val bool) {
	if step > 0 && step > c.lastStep {
		train = true
		c.lastStep = step
	}
	if hasVal && valStep != c.lastVal && (step >= valStep || ended) {
		val = true
		c.lastVal = valStep
		c.lastStep = max(c.lastStep, valStep)
	}
	return train, val
}
