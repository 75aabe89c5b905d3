//go:build linux

package e2e

import (
	"errors"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/moetrain/moetrain/internal/testkit"
)

// TestPlanGolden: `coordinator plan` output is golden-tested (go test ./e2e
// -run TestPlanGolden -update rewrites the files).
func TestPlanGolden(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"plan_default_2", []string{"--workers", "2"}, 0},
		{"plan_tp2_ep2", []string{"--workers", "4", "--config", "testdata/plan_tp2_ep2.toml"}, 0},
		{"plan_tp2_ep2_hosts", []string{"--config", "testdata/plan_tp2_ep2.toml", "--hosts", "a:2,b:3,c:3"}, 0},
		{"plan_sp2", []string{"--config", "testdata/plan_sp2.toml"}, 0},
		{"plan_bad", []string{"--workers", "6", "--config", "testdata/plan_bad.toml"}, 2},
		{"plan_too_few", []string{"--workers", "2", "--config", "testdata/plan_sp2.toml"}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "coordinator"), append([]string{"plan"}, c.args...)...)
			out, err := cmd.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.code {
				t.Errorf("exit code %d, want %d\n%s", code, c.code, out)
			}
			testkit.Golden(t, filepath.Join("testdata", c.name+".golden"), string(out), *update, "go test ./e2e -run TestPlanGolden -update")
		})
	}
}
