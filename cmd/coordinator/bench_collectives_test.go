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

func TestResolveSocketBuffer(t *testing.T) {
	cases := []struct {
		flag             string
		engine           bool
		want             int
		wantErrSubstring string
	}{
		{flag: "auto", engine: true, want: engineSocketBuffer},
		{flag: "auto", engine: false, want: 0},
		{flag: " 0 ", engine: true, want: 0},
		{flag: "65536", engine: false, want: 65536},
		{flag: "-1", wantErrSubstring: `--socket-buffer "-1"`},
		{flag: "1M", wantErrSubstring: `--socket-buffer "1M"`},
	}
	for _, c := range cases {
		got, err := resolveSocketBuffer(c.flag, c.engine)
		if c.wantErrSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstring) {
				t.Errorf("resolveSocketBuffer(%q): error %v, want one containing %q", c.flag, err, c.wantErrSubstring)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("resolveSocketBuffer(%q, engine %v) = %d, %v; want %d", c.flag, c.engine, got, err, c.want)
		}
	}
}
