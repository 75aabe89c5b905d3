//go:build linux

package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// scripts/launch-ssh.sh with an ssh stand-in that runs the remote command
// locally: parses the hostfile, starts the coordinator and one worker per
// slot, passes the token on stdin, and ends with the job's status.
func TestLaunchSSHScript(t *testing.T) {
	dir := t.TempDir()
	shim := filepath.Join(dir, "fakessh")
	// "ssh [-o opt]... HOST CMD..." runs CMD here.
	if err := os.WriteFile(shim, []byte("#!/usr/bin/env bash\nwhile [[ \"$1\" == -* ]]; do [[ \"$1\" == -o ]] && shift; shift; done\nshift\nexec bash -c \"$*\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostfile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostfile, []byte("# test cluster\nlocalhost slots=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(freeAddr(t))
	run := filepath.Join(dir, "run")
	out, err := runScript(t, 60*time.Second, "../scripts/launch-ssh.sh", "--hostfile", hostfile, "--config", writeJob(t), "--steps", "10",
		"--port", port, "--bin-dir", binDir, "--run-dir", run, "--ssh", shim+" -o BatchMode=yes")
	if err != nil {
		t.Fatalf("launch-ssh.sh: %v\n%s", err, out)
	}
	for _, want := range []string{"2 workers on 1 hosts", "job succeeded after 10/10 steps", "[localhost#1]"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(run, "summary.json")); err != nil {
		t.Error(err)
	}
	// A malformed hostfile is refused naming the line.
	if err := os.WriteFile(hostfile, []byte("a slots=2\nb cores=3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad, err := exec.Command("../scripts/launch-ssh.sh", "--hostfile", hostfile, "--ssh", shim).CombinedOutput()
	if err == nil || !strings.Contains(string(bad), "hosts:2: unknown field 'cores=3'") {
		t.Errorf("malformed hostfile: %v\n%s", err, bad)
	}
}
