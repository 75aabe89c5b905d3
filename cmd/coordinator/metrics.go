package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/train"
)

// addMetricsFlag registers --metrics-addr of launch and serve.
func addMetricsFlag(f *pflag.FlagSet, addr *string) {
	f.StringVar(addr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics while the job runs (host:port, e.g. 127.0.0.1:9090; port 0 picks one); empty = none")
}

// startMetrics serves the metrics of job on addr; with addr "" it returns
// nil metrics and a no-op stop. stop (idempotent) shuts the server down,
// giving scrapes in progress a second; callers stop it when the job ends.
func startMetrics(addr string, job train.JobConfig, workers int) (*metrics.Metrics, func(), error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	m, err := metrics.New(cluster.MetricsLimits(job, workers))
	if err != nil {
		return nil, nil, err
	}
	srv, err := metrics.Serve(addr, m)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	fmt.Fprintf(os.Stderr, "metrics on http://%s/metrics\n", srv.Addr())
	var once sync.Once
	return m, func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := srv.Close(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "coordinator:", err)
			}
		})
	}, nil
}
