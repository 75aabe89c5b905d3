// Package jobtest is what tests of the control plane, the worker runtime
// and the launcher share: a model small enough that a step takes
// milliseconds, gossip that finds a dead member in well under a second, a
// coordinator on loopback, and a job run to its end with one in-process
// agent per worker.
//
// It must not be imported by anything but tests, nor import the worker
// runtime (cluster/worker's own tests use it, so the caller starts agents).
package jobtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/train"
)

// Token is the job token of NewCoordinator's coordinators.
const Token = "tok"

// TinyJob is a model small enough that a step takes milliseconds.
func TinyJob() train.JobConfig {
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.Heads, cfg.Model.SeqLen = 16, 2, 2, 16
	cfg.Model.Experts, cfg.Model.ExpertHidden = 4, 32
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 2
	cfg.Train.Steps = 3
	return cfg
}

// FastGossip detects a dead member in well under a second.
func FastGossip() cluster.MembershipConfig {
	return cluster.MembershipConfig{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond,
		SuspicionMult: 2, GossipInterval: 50 * time.Millisecond}
}

// NewCoordinator is a coordinator on loopback for n workers of TinyJob
// with 5 steps, token Token, FastGossip and opts applied last.
func NewCoordinator(t *testing.T, n int, opts ...func(*cluster.CoordinatorConfig)) *cluster.Coordinator {
	t.Helper()
	job := TinyJob()
	job.Train.Steps = 5
	b, err := cluster.JobJSON(job)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.CoordinatorConfig{Listen: "127.0.0.1:0", Token: Token, JobID: t.Name(), Workers: n,
		TotalSteps: 5, Plan: cluster.PlanRequestFor(job), JobConfigJSON: b, DrainTimeout: 5 * time.Second,
		Membership: FastGossip(), Log: zerolog.Nop()}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := cluster.NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Run is how a job run by RunJob ended: the coordinator's result and
// error, and each agent's error.
type Run struct {
	Res    cluster.Result
	Err    error
	Agents []error
}

// RunJob runs a NewCoordinator coordinator and n agents (agent(ctx, i, c)
// runs worker i until it ends) to the end of the job, all within 30 s;
// during, if set, runs meanwhile.
func RunJob(t *testing.T, n int, agent func(ctx context.Context, i int, c *cluster.Coordinator) error,
	during func(c *cluster.Coordinator), opts ...func(*cluster.CoordinatorConfig)) Run {
	t.Helper()
	c := NewCoordinator(t, n, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out Run
	done := make(chan struct{})
	go func() { out.Res, out.Err = c.Run(ctx); close(done) }()
	out.Agents = make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out.Agents[i] = agent(ctx, i, c) })
	}
	if during != nil {
		during(c)
	}
	wg.Wait()
	<-done
	return out
}

// WaitStep polls c's status until the job has reached step; false, with
// the error reported on t, when a query fails first.
func WaitStep(ctx context.Context, t *testing.T, c *cluster.Coordinator, step int64) bool {
	t.Helper()
	for {
		s, err := cluster.QueryStatus(ctx, c.Addr(), Token)
		if err != nil {
			t.Errorf("status: %v", err)
			return false
		}
		if s.Step >= step {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
}
