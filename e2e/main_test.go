//go:build linux

// Package e2e runs the coordinator and worker binaries as separate processes:
// local launch, a worker killed mid-job, refusals, and a network-namespace
// cluster. The binaries are built once per run in TestMain. Its tests must
// reach the processes only as a user or operator would: command lines,
// environment, signals, the control plane's status RPC, exit status and the
// files they write. Library packages serve to compute reference values (the
// serial trainer's losses) and to read those files, never to change what a
// process does.
package e2e

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binDir string
	update = flag.Bool("update", false, "rewrite golden files")
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "moetrain-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	for _, name := range []string{"coordinator", "worker"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../cmd/"+name)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n", name, err)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

// tinyModel is the [model] table of a model small enough that a step takes
// milliseconds; a job may add keys to the table after it.
const tinyModel = `
[model]
d_model = 32
layers = 2
heads = 2
seq_len = 32
experts = 4
expert_hidden = 64
`

// tinyJob is a job of tinyModel.
var tinyJob = tinyTrain(20, 10, 2, 5)

// tinyTrain is a job of tinyModel on batches of 4 sequences of 32 tokens,
// for steps steps, with validation every evalEvery steps on evalBatches
// batches and a loss line every logEvery steps.
func tinyTrain(steps, evalEvery, evalBatches, logEvery int) string {
	return tinyModel + fmt.Sprintf(`
[data]
seq_len = 32
batch_size = 4

[train]
steps = %d
eval_every = %d
eval_batches = %d
log_every = %d
`, steps, evalEvery, evalBatches, logEvery)
}

func writeJob(t *testing.T) string {
	t.Helper()
	return writeJobText(t, tinyJob)
}

// writeJobText writes job to job.toml in a fresh temporary directory and
// returns its path.
func writeJobText(t *testing.T, job string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "job.toml")
	if err := os.WriteFile(p, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// freeAddr returns a loopback address with a currently free port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// checkBusyAddrFails runs launch and serve with flag set to an address that
// is taken: each must fail at once with output that holds every one of
// want, before any worker is started.
func checkBusyAddrFails(t *testing.T, flag string, want ...string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, cmd := range []string{"launch", "serve"} {
		run := filepath.Join(t.TempDir(), "run")
		args := []string{cmd, "--workers", "2", "--config", writeJob(t), "--run-dir", run, flag, ln.Addr().String()}
		if cmd == "launch" {
			args = append(args, "--no-bar")
		} else {
			args = append(args, "--listen", freeAddr(t), "--token", "tok")
		}
		p := start(t, "coordinator "+cmd, nil, args...)
		code := p.wait(30 * time.Second)
		out := p.output()
		missing := code == 0
		for _, w := range want {
			missing = missing || !strings.Contains(out, w)
		}
		if missing {
			t.Errorf("%s with a busy %s: exit %d:\n%s", cmd, flag, code, out)
		}
		if ws, _ := filepath.Glob(filepath.Join(run, "worker-*")); len(ws) > 0 {
			t.Errorf("%s with a busy %s started workers: %v", cmd, flag, ws)
		}
	}
}

// aptInstall installs the Debian packages pkgs, which provide what, with
// apt-get (updating the package lists when the first try fails: they may
// be stale). It skips the test when this process is not root or apt-get
// fails.
func aptInstall(t *testing.T, what string, pkgs ...string) {
	t.Helper()
	cmdline := "apt-get install -y " + strings.Join(pkgs, " ")
	if os.Geteuid() != 0 {
		t.Skipf("%s not installed and installing needs root: %s", what, cmdline)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	apt := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	install := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)
	if _, err := apt(install...); err != nil {
		if out, err := apt("update", "-qq"); err != nil {
			t.Skipf("%s not installed and apt-get update failed (%v):\n%s", what, err, out)
		}
		if out, err := apt(install...); err != nil {
			t.Skipf("%s not installed and %s failed (%v):\n%s", what, cmdline, err, out)
		}
	}
}

// runScript runs a script with args and returns its combined output; when it
// has not finished within d, its whole process group (the binaries it
// started included) is killed and the test fails with the output so far.
func runScript(t *testing.T, d time.Duration, script string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second // a child that keeps the output pipe open cannot hang the test
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish within %v:\n%s", filepath.Base(script), d, out)
	}
	return out, err
}

// process is a started binary whose combined output is collected and can be
// waited on for a line.
type process struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	line chan string
	done chan struct{}
	err  error
}

func start(t *testing.T, name string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, strings.Fields(name)[0]), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &process{t: t, name: name, cmd: cmd, line: make(chan string, 1<<16), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.line <- sc.Text():
			default:
			}
		}
		_, _ = io.Copy(io.Discard, pr) // after an over-long line: keep the process from blocking
	}()
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		<-readDone // every line is in p.out before the process counts as exited
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
			t.Errorf("%s (pid %d) was still running at the end of the test; killed", name, cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", name, p.output())
		}
	})
	return p
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitLine waits until a line containing every one of subs appears.
func (p *process) waitLine(ctx context.Context, subs ...string) (string, error) {
	for {
		select {
		case l := <-p.line:
			ok := true
			for _, s := range subs {
				ok = ok && strings.Contains(l, s)
			}
			if ok {
				return l, nil
			}
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no line containing %q: %w", p.name, subs, ctx.Err())
		}
	}
}

// wait waits for the process to exit within d and returns its exit code
// (-1 if killed by a signal).
func (p *process) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("%s (pid %d) did not exit within %v", p.name, p.cmd.Process.Pid, d)
	}
	return p.cmd.ProcessState.ExitCode()
}
