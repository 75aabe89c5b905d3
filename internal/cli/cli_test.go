package cli

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moetrain/moetrain/cluster/worker"
)

// The child process of TestMainExitStatus: Main of a root whose command fails.
func TestMain(m *testing.M) {
	if os.Getenv("CLI_TEST_MAIN") == "fail" {
		root := Root("tool", "a test tool")
		root.RunE = func(*cobra.Command, []string) error { return errors.New("boom") }
		root.SetArgs(nil)
		Main(root)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Main reports a failing command once, as "NAME: error", and exits 2;
// cobra prints neither usage nor its own error line.
func TestMainExitStatus(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CLI_TEST_MAIN=fail")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2", err)
	}
	if got := stderr.String(); got != "tool: boom\n" {
		t.Fatalf("stderr %q, want %q", got, "tool: boom\n")
	}
}

func TestAddWorkerFlags(t *testing.T) {
	var o worker.WorkerOptions
	f := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	AddWorkerFlags(f, &o)
	if o.JoinTimeout != 30*time.Second {
		t.Fatalf("default join timeout %v, want 30s", o.JoinTimeout)
	}
	err := f.Parse([]string{"--join", "10.0.0.1:7070", "--token", "tok", "--host", "h1", "--bind", "10.0.0.2",
		"--threads", "3", "--log-file", "w.log", "-v", "--join-timeout", "5s", "--tls-cert", "c.pem",
		"--tls-key", "k.pem", "--tls-ca", "ca.pem", "--tcp-congestion", "reno"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Join != "10.0.0.1:7070" || o.Token != "tok" || o.Host != "h1" || o.BindIP != "10.0.0.2" || o.Threads != 3 ||
		o.LogFile != "w.log" || !o.Verbose || o.JoinTimeout != 5*time.Second || o.TLS.Cert != "c.pem" ||
		o.TLS.Key != "k.pem" || o.TLS.CA != "ca.pem" || o.TCPCongestion != "reno" {
		t.Fatalf("parsed %+v", o)
	}
}
