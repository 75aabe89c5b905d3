//go:build linux

package cpuquota

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testSpinEnv makes the test binary a busy loop: once a line arrives on
// stdin it spins for the duration the variable holds, then exits.
const testSpinEnv = "MOETRAIN_TEST_SPIN"

func TestMain(m *testing.M) {
	if d := os.Getenv(testSpinEnv); d != "" {
		os.Exit(spin(d))
	}
	os.Exit(m.Run())
}

// spin waits for a line on stdin, then keeps one core busy for d of wall
// time; it returns the exit status.
func spin(d string) int {
	dur, err := time.ParseDuration(d)
	if err != nil {
		os.Stderr.WriteString(testSpinEnv + ": " + err.Error() + "\n")
		return 2
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Stderr.WriteString("spin: reading the start line: " + err.Error() + "\n")
		return 2
	}
	x := uint64(1)
	for t0 := time.Now(); time.Since(t0) < dur; {
		for range 1000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	if x == 0 { // keeps the loop from being optimised away
		os.Stderr.WriteString("spin: x is 0\n")
	}
	return 0
}

// newTestQuota creates a quota group for this test or skips the test when
// this host cannot have one (no root, no cpu controller, ...).
func newTestQuota(t *testing.T, name string, cores float64) *Quota {
	t.Helper()
	q, err := New(fmt.Sprintf("moetrain-test-%d-%s", os.Getpid(), name), cores)
	if ue, ok := errors.AsType[*UnavailableError](err); ok {
		t.Skipf("cgroups are not writable here: %v", ue)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	})
	return q
}

// TestCPUQuotaLimits: a busy child in a 0.25-core group gets about a quarter
// of a core over its wall time, not a whole one; Close removes the group.
func TestCPUQuotaLimits(t *testing.T) {
	q := newTestQuota(t, "limit", 0.25)
	if got := q.Cores(); got != 0.25 {
		t.Errorf("Cores() = %v, want 0.25", got)
	}
	// The kernel holds what was written: quota 2.5 ms per 10 ms period.
	if b, err := os.ReadFile(filepath.Join(q.Dir(), "cpu.max")); err == nil {
		if got := strings.TrimSpace(string(b)); got != "2500 10000" {
			t.Errorf("cpu.max = %q, want \"2500 10000\"", got)
		}
	} else {
		for file, want := range map[string]string{"cpu.cfs_quota_us": "2500", "cpu.cfs_period_us": "10000"} {
			b, err := os.ReadFile(filepath.Join(q.Dir(), file))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), testSpinEnv+"=600ms")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := q.Add(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal(err)
	}
	// The child spins only once it is in the group.
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Error(err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("spinning child: %v: %s", err, stderr.String())
	}
	wall := time.Since(t0)
	st := cmd.ProcessState
	cpu := st.UserTime() + st.SystemTime()
	stat, err := q.Stat()
	if err != nil {
		t.Error(err)
	}
	t.Logf("wall %v, cpu %v (%.2f of wall), quota periods throttled %d of %d", wall, cpu, cpu.Seconds()/wall.Seconds(), stat.Throttled, stat.Periods)
	if wall < 600*time.Millisecond {
		t.Errorf("child exited after %v, before its 600ms of spinning", wall)
	}
	if cpu > time.Duration(0.45*float64(wall)) {
		t.Errorf("child used %v of CPU in %v: the 0.25-core limit was not enforced", cpu, wall)
	}
	if cpu < time.Duration(0.05*float64(wall)) {
		t.Errorf("child used only %v of CPU in %v: did it run?", cpu, wall)
	}

	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(q.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, stat %s: %v, want not-exist", q.Dir(), err)
	}
	if err := q.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := q.Add(os.Getpid()); err == nil {
		t.Error("Add after Close succeeded")
	}
}

// TestCPUQuotaSmallCores: below 0.1 cores the period grows to keep the
// kernel's 1 ms minimum quota, with the same share.
func TestCPUQuotaSmallCores(t *testing.T) {
	q := newTestQuota(t, "small", 0.02)
	if q.quota != time.Millisecond || q.period != 50*time.Millisecond {
		t.Errorf("quota %v period %v, want 1ms per 50ms", q.quota, q.period)
	}
	if got := q.Cores(); math.Abs(got-0.02) > 1e-12 {
		t.Errorf("Cores() = %v, want 0.02", got)
	}
}

// newFails checks that New(name, cores) fails with an error containing each
// of want; a group New made all the same is closed.
func newFails(t *testing.T, name string, cores float64, want ...string) {
	t.Helper()
	q, err := New(name, cores)
	if err == nil || slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(err.Error(), w) }) {
		if q != nil {
			_ = q.Close()
		}
		t.Errorf("New(%q, %v): error %v, want one containing each of %q", name, cores, err, want)
	}
}

func TestCPUQuotaBadInput(t *testing.T) {
	newFails(t, "a", 0, "cores 0")
	newFails(t, "a", -1, "cores -1")
	newFails(t, "a", math.NaN(), "cores NaN")
	newFails(t, "a", math.Inf(1), "cores +Inf")
	newFails(t, "a", 1e-4, "below the kernel's minimum")
	newFails(t, "", 1, "group name")
	newFails(t, "a/b", 1, "group name")
	newFails(t, "..", 1, "group name")
}

// TestCPUQuotaExists: a name already taken is an error naming the path, and
// the existing group is left alone.
func TestCPUQuotaExists(t *testing.T) {
	q := newTestQuota(t, "dup", 0.5)
	newFails(t, filepath.Base(q.Dir()), 0.5, q.Dir(), "already exists")
	if _, err := os.Stat(q.Dir()); err != nil {
		t.Errorf("first group gone: %v", err)
	}
}

func TestQuotaReadCgroupMounts(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "mountinfo")
	text := `22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 /kube/pod1 /sys/fs/cgroup/my\040unified rw,relatime - cgroup2 cgroup2 rw
`
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readCgroupMounts(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []cgroupMount{
		{root: "/", point: "/sys/fs/cgroup/cpu,cpuacct", hasCPU: true},
		{root: "/", point: "/sys/fs/cgroup/cpuset"},
		{root: "/kube/pod1", point: "/sys/fs/cgroup/my unified", v2: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("mounts\n got %+v\nwant %+v", got, want)
	}

	if err := os.WriteFile(p, []byte(text+"99 1 0:1 / /x rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readCgroupMounts(p); err == nil || !strings.Contains(err.Error(), p+":6") {
		t.Errorf("malformed line 6: error %v, want one naming %s:6", err, p)
	}
}

func TestQuotaReadOwnCgroups(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cgroup")
	if err := os.WriteFile(p, []byte("4:memory:/a\n2:cpu,cpuacct:/b/c\n0::/d\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	own, err := readOwnCgroups(p)
	if err != nil {
		t.Fatal(err)
	}
	if own["cpu"] != "/b/c" || own["cpuacct"] != "/b/c" || own["memory"] != "/a" || own[""] != "/d" {
		t.Errorf("own cgroups %v", own)
	}
	if err := os.WriteFile(p, []byte("4:memory:/a\nbroken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readOwnCgroups(p); err == nil || !strings.Contains(err.Error(), p+":2") {
		t.Errorf("malformed line 2: error %v, want one naming %s:2", err, p)
	}
}

func TestQuotaUnderMount(t *testing.T) {
	point := t.TempDir()
	if err := os.MkdirAll(filepath.Join(point, "x", "y"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ root, own, want string }{
		{"/", "/x/y", filepath.Join(point, "x", "y")},
		{"/", "/", point},
		{"/pod", "/pod/x", filepath.Join(point, "x")},
		{"/pod", "/other/x", point}, // outside the mounted root
		{"/", "/absent", point},     // not visible here
		{"/", "", point},
	} {
		if got := underMount(cgroupMount{root: c.root, point: point}, c.own); got != c.want {
			t.Errorf("root %q own %q: %q, want %q", c.root, c.own, got, c.want)
		}
	}
}

func TestQuotaUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/tab\011x`: "/tab\tx",
		`/plain`:    "/plain",
		`/end\04`:   `/end\04`, // too short to be an escape
		`/bad\09x`:  `/bad\09x`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
