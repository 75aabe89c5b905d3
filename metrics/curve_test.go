package metrics

import "testing"

func TestCurveCursor(t *testing.T) {
	type st struct {
		step    int
		hasVal  bool
		valStep int
		ended   bool
		train   bool
		val     bool
	}
	for _, tc := range []struct {
		name string
		seq  []st
	}{
		{"steps add training points once", []st{
			{step: 0}, {step: 1, train: true}, {step: 1}, {step: 3, train: true}}},
		// A fast rank validated step 30 while the slowest is at 29: the
		// validation point waits for step 30, whose loss it then carries.
		{"validation waits for the slowest rank", []st{
			{step: 29, train: true}, {step: 29, hasVal: true, valStep: 30},
			{step: 30, hasVal: true, valStep: 30, train: true, val: true},
			{step: 30, hasVal: true, valStep: 30}}},
		{"an ended job adds its last validation", []st{
			{step: 29, train: true}, {step: 29, hasVal: true, valStep: 30, ended: true, val: true},
			{step: 30, hasVal: true, valStep: 30, ended: true}}},
		{"a recovery resumes behind the curve", []st{
			{step: 40, train: true}, {step: 20}, {step: 40}, {step: 41, train: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCurveCursor()
			for i, s := range tc.seq {
				train, val := c.Advance(s.step, s.hasVal, s.valStep, s.ended)
				if train != s.train || val != s.val {
					t.Fatalf("status %d %+v: train %v val %v, want %v %v", i, s, train, val, s.train, s.val)
				}
			}
		})
	}
}
