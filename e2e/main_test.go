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
const tinyJob = tinyModel + `
[data]
seq_len = 32
batch_size = 4

[train]
steps = 20
eval_every = 10
eval_batches = 2
log_every = 5
`

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
