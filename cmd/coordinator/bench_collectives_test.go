package main

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestResolveSpin(t *testing.T) {
	cores := runtime.NumCPU()
	cases := []struct {
		spin, yield      string
		workers, procs   int
		wantSpin         time.Duration
		wantYield        bool
		wantErrSubstring string
	}{
		{spin: "auto", yield: "auto", workers: 1, wantSpin: autoSpin, wantYield: false},
		{spin: "auto", yield: "auto", workers: cores + 1, wantSpin: autoSpin, wantYield: true},
		{spin: "auto", yield: "auto", workers: 1, procs: cores + 1, wantSpin: autoSpin, wantYield: true},
		{spin: "0", yield: "auto", workers: 1, wantSpin: 0, wantYield: false},
		{spin: "50us", yield: "true", workers: 1, wantSpin: 50 * time.Microsecond, wantYield: true},
		{spin: " 1ms ", yield: "false", workers: cores + 1, wantSpin: time.Millisecond, wantYield: false},
		{spin: "fast", yield: "auto", workers: 2, wantErrSubstring: `--spin "fast"`},
		{spin: "-1us", yield: "auto", workers: 2, wantErrSubstring: "must not be negative"},
		{spin: "auto", yield: "maybe", workers: 2, wantErrSubstring: `--spin-yield "maybe"`},
	}
	for _, c := range cases {
		spin, yield, err := resolveSpin(c.spin, c.yield, c.workers, c.procs)
		if c.wantErrSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstring) {
				t.Errorf("resolveSpin(%q, %q): error %v, want one containing %q", c.spin, c.yield, err, c.wantErrSubstring)
			}
			continue
		}
		if err != nil || spin != c.wantSpin || yield != c.wantYield {
			t.Errorf("resolveSpin(%q, %q, workers %d, procs %d) = %v, %v, %v; want %v, %v",
				c.spin, c.yield, c.workers, c.procs, spin, yield, err, c.wantSpin, c.wantYield)
		}
	}
}

func TestResolveEngine(t *testing.T) {
	cases := []struct {
		engine, sockBuf  string
		shaped           bool
		wantEngine       bool
		wantSockBuf      int
		wantErrSubstring string
	}{
		{engine: "auto", sockBuf: "auto", wantEngine: true, wantSockBuf: engineSocketBuffer},
		{engine: "auto", sockBuf: "auto", shaped: true, wantEngine: false, wantSockBuf: 0},
		{engine: "true", sockBuf: "auto", shaped: true, wantEngine: true, wantSockBuf: engineSocketBuffer},
		{engine: "false", sockBuf: "auto", wantEngine: false, wantSockBuf: 0},
		{engine: "true", sockBuf: " 0 ", wantEngine: true, wantSockBuf: 0},
		{engine: "false", sockBuf: "65536", wantEngine: false, wantSockBuf: 65536},
		{engine: "yes", sockBuf: "auto", wantErrSubstring: `--engine "yes"`},
		{engine: "auto", sockBuf: "-1", wantErrSubstring: `--socket-buffer "-1"`},
		{engine: "auto", sockBuf: "1M", wantErrSubstring: `--socket-buffer "1M"`},
	}
	for _, c := range cases {
		engine, sockBuf, err := resolveEngine(c.engine, c.sockBuf, c.shaped)
		if c.wantErrSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstring) {
				t.Errorf("resolveEngine(%q, %q): error %v, want one containing %q", c.engine, c.sockBuf, err, c.wantErrSubstring)
			}
			continue
		}
		if err != nil || engine != c.wantEngine || sockBuf != c.wantSockBuf {
			t.Errorf("resolveEngine(%q, %q, shaped %v) = %v, %d, %v; want %v, %d",
				c.engine, c.sockBuf, c.shaped, engine, sockBuf, err, c.wantEngine, c.wantSockBuf)
		}
	}
}
