package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/dashboard"
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/train"
)

// monitorFlags are launch's and serve's --metrics-addr, --http and
// --http-linger.
type monitorFlags struct {
	metricsAddr, httpAddr string
	linger                time.Duration
}

func addMonitorFlags(f *pflag.FlagSet, o *monitorFlags) {
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on http://ADDR/metrics while the job runs (host:port, e.g. 127.0.0.1:9090; port 0 picks one); empty = none")
	f.StringVar(&o.httpAddr, "http", "", "serve the live dashboard (curves, workers, expert load) on http://ADDR/ while the job runs, its data on /api/state and the metrics on /metrics (host:port; port 0 picks one); empty = none")
	f.DurationVar(&o.linger, "http-linger", 0, "keep --http and --metrics-addr serving this long after the job ended, to look at its final state (Ctrl-C ends the wait)")
}

// monitor is a job's metrics and the servers that show them. Create it
// with startMonitor; stop (idempotent) shuts the servers down, giving
// requests in progress a second.
type monitor struct {
	metrics *metrics.Metrics // nil: neither flag given
	servers []*metrics.Server
	urls    []string
	linger  time.Duration
	once    sync.Once
}

// startMonitor creates the metrics of job when --metrics-addr or --http is
// given and starts their servers, printing their URLs.
func startMonitor(o monitorFlags, job train.JobConfig, workers int) (*monitor, error) {
	mon := &monitor{linger: o.linger}
	if o.linger < 0 {
		return nil, fmt.Errorf("--http-linger %v: must be ≥ 0", o.linger)
	}
	if o.metricsAddr == "" && o.httpAddr == "" {
		return mon, nil
	}
	m, err := metrics.New(cluster.MetricsLimits(job, workers))
	if err != nil {
		return nil, err
	}
	mon.metrics = m
	if o.metricsAddr != "" {
		srv, err := metrics.Serve(o.metricsAddr, m)
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		mon.add(srv, "metrics on http://%s/metrics")
	}
	if o.httpAddr != "" {
		st := dashboard.New(cluster.MetricsLimits(job, workers))
		m.AddObserver(st)
		srv, err := metrics.Listen(o.httpAddr, "--http", dashboard.Handler(st, m.Handler()))
		if err != nil {
			mon.stop()
			return nil, fmt.Errorf("--http: %w", err)
		}
		mon.add(srv, "dashboard on http://%s/")
	}
	return mon, nil
}

func (mon *monitor) add(srv *metrics.Server, format string) {
	url := fmt.Sprintf(format, srv.Addr())
	fmt.Fprintln(os.Stderr, url)
	mon.servers, mon.urls = append(mon.servers, srv), append(mon.urls, url)
}

// jobEnded keeps the servers up for --http-linger (a Ctrl-C, SIGINT or
// SIGTERM, ends the wait), then stops them.
func (mon *monitor) jobEnded() {
	if len(mon.servers) > 0 && mon.linger > 0 {
		ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		fmt.Fprintf(os.Stderr, "job ended; still serving for %v (--http-linger; Ctrl-C ends the wait):\n", mon.linger)
		for _, u := range mon.urls {
			fmt.Fprintln(os.Stderr, "  "+u)
		}
		select {
		case <-ctx.Done():
		case <-time.After(mon.linger):
		}
		cancel()
	}
	mon.stop()
}

func (mon *monitor) stop() {
	mon.once.Do(func() {
		for _, srv := range mon.servers {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := srv.Close(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "coordinator:", err)
			}
			cancel()
		}
	})
}
