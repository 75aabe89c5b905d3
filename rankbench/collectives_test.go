package rankbench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestResolveSpin(t *testing.T) {
	cases := []struct {
		spin, yield            string
		engine, oversubscribed bool
		wantSpin               time.Duration
		wantYield              bool
		wantErrSubstring       string
	}{
		{spin: "auto", yield: "auto", engine: true, wantSpin: AutoSpin, wantYield: false},
		{spin: "auto", yield: "auto", engine: true, oversubscribed: true, wantSpin: AutoSpinYield, wantYield: true},
		{spin: "auto", yield: "true", engine: true, wantSpin: AutoSpinYield, wantYield: true},
		{spin: "auto", yield: "false", engine: true, oversubscribed: true, wantSpin: AutoSpin, wantYield: false},
		{spin: "0", yield: "auto", engine: true, wantSpin: 0, wantYield: false},
		{spin: "50us", yield: "true", engine: true, wantSpin: 50 * time.Microsecond, wantYield: true},
		{spin: " 1ms ", yield: "false", engine: true, oversubscribed: true, wantSpin: time.Millisecond, wantYield: false},
		{spin: "auto", yield: "auto", engine: false, oversubscribed: true, wantSpin: 0, wantYield: false},
		{spin: "50us", yield: "auto", engine: false, wantErrSubstring: "--engine=false"},
		{spin: "auto", yield: "true", engine: false, wantErrSubstring: "--engine=false"},
		{spin: "fast", yield: "auto", engine: true, wantErrSubstring: `--spin "fast"`},
		{spin: "-1us", yield: "auto", engine: true, wantErrSubstring: "must not be negative"},
		{spin: "auto", yield: "maybe", engine: true, wantErrSubstring: `--spin-yield "maybe"`},
	}
	for _, c := range cases {
		spin, yield, err := resolveSpin(c.spin, c.yield, c.engine, c.oversubscribed)
		if c.wantErrSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstring) {
				t.Errorf("resolveSpin(%q, %q, engine %v): error %v, want one containing %q", c.spin, c.yield, c.engine, err, c.wantErrSubstring)
			}
			continue
		}
		if err != nil || spin != c.wantSpin || yield != c.wantYield {
			t.Errorf("resolveSpin(%q, %q, engine %v, oversubscribed %v) = %v, %v, %v; want %v, %v",
				c.spin, c.yield, c.engine, c.oversubscribed, spin, yield, err, c.wantSpin, c.wantYield)
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
		{flag: "auto", engine: true, want: EngineSocketBuffer},
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

func TestResolveBind(t *testing.T) {
	two := []int{0, 1}
	cases := []struct {
		flag             string
		workers          int
		oversubscribed   bool
		cpus             []int
		want             []int
		wantErrSubstring string
	}{
		{flag: "auto", workers: 2, cpus: two, want: two},
		{flag: "auto", workers: 4, oversubscribed: true, cpus: two, want: nil},
		{flag: "core", workers: 2, oversubscribed: true, cpus: two, want: two},
		{flag: "core", workers: 3, oversubscribed: true, cpus: two, wantErrSubstring: "3 ranks but only 2 CPUs"},
		{flag: "none", workers: 1, cpus: two, want: nil},
		{flag: "socket", workers: 1, cpus: two, wantErrSubstring: `--bind "socket"`},
	}
	for _, c := range cases {
		got, err := resolveBind(c.flag, c.workers, c.oversubscribed, c.cpus)
		if c.wantErrSubstring != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErrSubstring) {
				t.Errorf("resolveBind(%q, %d, %v): error %v, want one containing %q", c.flag, c.workers, c.oversubscribed, err, c.wantErrSubstring)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("resolveBind(%q, %d, %v) = %v, %v; want %v", c.flag, c.workers, c.oversubscribed, got, err, c.want)
		}
	}
}

// TestRankProcs: --gomaxprocs wins, then $GOMAXPROCS, then cores/workers.
func TestRankProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	if got, want := RankProcs(1, 0), max(1, runtime.NumCPU()); got != want {
		t.Errorf("RankProcs(1, 0) = %d, want %d", got, want)
	}
	if got := RankProcs(4*runtime.NumCPU(), 0); got != 1 {
		t.Errorf("RankProcs with more ranks than cores = %d, want 1", got)
	}
	t.Setenv("GOMAXPROCS", "3")
	if got := RankProcs(2, 0); got != 3 {
		t.Errorf("RankProcs with GOMAXPROCS=3 = %d, want 3", got)
	}
	if got := RankProcs(2, 5); got != 5 {
		t.Errorf("RankProcs with --gomaxprocs 5 = %d, want 5", got)
	}
}

// TestBindProcess pins a child process's threads and reads them back.
func TestBindProcess(t *testing.T) {
	cpus, err := AllowedCPUs()
	if err != nil || len(cpus) == 0 {
		t.Fatalf("AllowedCPUs: %v, %v", cpus, err)
	}
	if runtime.GOOS != "linux" {
		t.Skip("binding is implemented on Linux only")
	}
	if os.Getenv("MOETRAIN_TEST_BIND_CHILD") != "" {
		last := cpus[len(cpus)-1]
		if err := BindProcess(last); err != nil {
			t.Fatal(err)
		}
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, tk := range tasks {
			b, err := os.ReadFile("/proc/self/task/" + tk.Name() + "/status")
			if err != nil {
				continue
			}
			if want := fmt.Sprintf("Cpus_allowed_list:\t%d\n", last); !strings.Contains(string(b), want) {
				t.Fatalf("thread %s not bound to CPU %d", tk.Name(), last)
			}
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBindProcess$")
	cmd.Env = append(os.Environ(), "MOETRAIN_TEST_BIND_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestValidateHosts: --hosts names every rank's host, --netns needs it.
func TestValidateHosts(t *testing.T) {
	base := func() Collectives {
		return Collectives{Workers: 4, Transport: "tcp", Ops: "alltoall", Sizes: "64K", Iters: 1, Reps: 1,
			SocketBufferFlag: "auto", SpinFlag: "auto", YieldFlag: "auto", BindFlag: "none", Shm: true}
	}
	cases := []struct {
		hosts   string
		netns   bool
		wantErr string
		want    []string
	}{
		{hosts: "", want: nil},
		{hosts: "a,a,b,b", want: []string{"a", "a", "b", "b"}},
		{hosts: "a,a,b,b", netns: true, want: []string{"a", "a", "b", "b"}},
		{hosts: "a,b,c", wantErr: "want 4 non-empty host names"},
		{hosts: "a,,b,b", wantErr: "want 4 non-empty host names"},
		{hosts: "", netns: true, wantErr: "--netns needs --hosts"},
	}
	for _, c := range cases {
		f := base()
		f.HostsFlag, f.Netns = c.hosts, c.netns
		_, _, _, err := f.Validate()
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("--hosts %q --netns=%v: error %v, want one containing %q", c.hosts, c.netns, err, c.wantErr)
			}
			continue
		}
		if err != nil || fmt.Sprint(f.Hosts) != fmt.Sprint(c.want) {
			t.Errorf("--hosts %q: hosts %q, error %v; want %q", c.hosts, f.Hosts, err, c.want)
		}
	}
}
