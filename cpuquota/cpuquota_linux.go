//go:build linux

package cpuquota

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// quotaPeriod is the CFS bandwidth period of a Quota. The kernel grants
// the group its quota once per period and throttles it, once the quota is
// spent, until the next. With the kernel's default of 100 ms a 0.5-core rank
// could run 50 ms flat out and then stall 50 ms, while its peers wait for it
// in a collective: the stalls would land on top of the work instead of
// spreading it. At 10 ms the throttling granularity is under 1% of a 1-4 s
// step, so the rank runs like a device with that many cores; much shorter
// periods cost scheduler overhead (a refill per period per group).
const quotaPeriod = 10 * time.Millisecond

// Kernel bounds of cpu.cfs_period_us / cpu.max: quota >= 1 ms, period
// 1 ms..1 s. Below quotaPeriod·cores = 1 ms the period grows to keep the
// quota at 1 ms.
const (
	minQuota  = time.Millisecond
	maxPeriod = time.Second
)

// quotaRemoveTimeout bounds Close's retries: a group stays busy for a moment
// after its last process is reaped.
const quotaRemoveTimeout = 2 * time.Second

// Quota is a cgroup with a CFS bandwidth limit: the processes in it get at
// most cores CPUs' worth of time together, however idle the others are, and
// no one else takes that share from them. Not safe for concurrent use.
type Quota struct {
	dir    string // the group's directory
	v2     bool   // cgroup v2 (cpu.max) rather than v1 (cpu.cfs_*)
	period time.Duration
	quota  time.Duration
	closed bool
}

// UnavailableError marks errors that mean this host (or this user)
// cannot give a process a CPU quota at all, as opposed to a failure of one
// operation; tests skip on it.
type UnavailableError struct{ err error }

func (e *UnavailableError) Error() string { return e.err.Error() }
func (e *UnavailableError) Unwrap() error { return e.err }

func unavailable(format string, a ...any) error {
	return &UnavailableError{fmt.Errorf(format, a...)}
}

// New creates the cgroup name (one path element; callers make it
// unique, e.g. with their pid) under this process's own cpu cgroup, limited to
// cores CPUs. The group is empty until Add; Close removes it.
func New(name string, cores float64) (*Quota, error) {
	if !(cores > 0) || math.IsInf(cores, 0) {
		return nil, fmt.Errorf("cpu quota %q: cores %g: want a finite value > 0", name, cores)
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("cpu quota: group name %q: want one path element", name)
	}
	period := quotaPeriod
	if p := time.Duration(math.Ceil(float64(minQuota) / cores)); p > period {
		period = p.Round(time.Microsecond)
	}
	if period > maxPeriod {
		return nil, fmt.Errorf("cpu quota %q: cores %g is below the kernel's minimum of %g (1 ms per 1 s period)", name, cores, float64(minQuota)/float64(maxPeriod))
	}
	quota := max(minQuota, time.Duration(math.Round(cores*float64(period)/1e3))*time.Microsecond)

	parent, v2, err := cgroupCPUParent()
	if err != nil {
		return nil, err
	}
	q := &Quota{dir: filepath.Join(parent, name), v2: v2, period: period, quota: quota}
	if err := os.Mkdir(q.dir, 0o755); err != nil {
		errno := unwrapPathError(err)
		switch {
		case errors.Is(err, os.ErrExist):
			return nil, fmt.Errorf("creating cgroup %s: it already exists (left by an earlier run? remove it with rmdir)", q.dir)
		case errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EROFS):
			return nil, unavailable("creating cgroup %s: %w (needs root or a delegated cgroup)", q.dir, errno)
		}
		return nil, fmt.Errorf("creating cgroup %s: %w", q.dir, errno)
	}
	if err := q.setLimit(); err != nil {
		if rmErr := syscall.Rmdir(q.dir); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("removing cgroup %s: %w", q.dir, rmErr))
		}
		return nil, err
	}
	return q, nil
}

// setLimit writes the group's quota and period.
func (q *Quota) setLimit() error {
	us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }
	if q.v2 {
		return writeCgroupFile(q.dir, "cpu.max", us(q.quota)+" "+us(q.period))
	}
	// A fresh group has no quota (-1), so any period is valid first.
	if err := writeCgroupFile(q.dir, "cpu.cfs_period_us", us(q.period)); err != nil {
		return err
	}
	return writeCgroupFile(q.dir, "cpu.cfs_quota_us", us(q.quota))
}

// Add moves process pid, all its threads and every thread or child it
// creates later into the group.
func (q *Quota) Add(pid int) error {
	if q.closed {
		return fmt.Errorf("adding pid %d to cgroup %s: the group is closed", pid, q.dir)
	}
	if pid <= 0 {
		return fmt.Errorf("adding pid %d to cgroup %s: want a pid > 0", pid, q.dir)
	}
	if err := writeCgroupFile(q.dir, "cgroup.procs", strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("adding pid %d: %w", pid, err)
	}
	return nil
}

// Dir is the group's directory.
func (q *Quota) Dir() string { return q.dir }

// Cores is the limit the group enforces (quota / period).
func (q *Quota) Cores() float64 { return float64(q.quota) / float64(q.period) }

// Stat is the group's CFS bandwidth accounting so far.
type Stat struct {
	Periods   int64 // periods in which the group was runnable
	Throttled int64 // of those, periods in which it used up its quota
}

// Stat reads the group's cpu.stat.
func (q *Quota) Stat() (Stat, error) {
	var st Stat
	p := filepath.Join(q.dir, "cpu.stat")
	b, err := os.ReadFile(p)
	if err != nil {
		return st, fmt.Errorf("reading %s: %w", p, unwrapPathError(err))
	}
	var havePeriods, haveThrottled bool
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "nr_periods":
			st.Periods, havePeriods = n, err == nil
		case "nr_throttled":
			st.Throttled, haveThrottled = n, err == nil
		}
	}
	if !havePeriods || !haveThrottled {
		return st, fmt.Errorf("reading %s: no nr_periods / nr_throttled counts in %q", p, string(b))
	}
	return st, nil
}

// Close removes the group. Its processes must have exited (and been reaped)
// first: the kernel refuses to remove a group with members, so Close retries
// for a moment and then fails naming the pids still there. Closing twice, or
// a group already gone, is fine.
func (q *Quota) Close() error {
	if q.closed {
		return nil
	}
	deadline := time.Now().Add(quotaRemoveTimeout)
	for {
		err := syscall.Rmdir(q.dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			q.closed = true
			return nil
		}
		if errors.Is(err, syscall.EBUSY) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		left := ""
		if b, rerr := os.ReadFile(filepath.Join(q.dir, "cgroup.procs")); rerr == nil {
			if pids := strings.Fields(string(b)); len(pids) > 0 {
				left = " (pids still in it: " + strings.Join(pids, " ") + ")"
			}
		}
		return fmt.Errorf("removing cgroup %s: %w%s", q.dir, err, left)
	}
}

// writeCgroupFile writes value to dir/file; cgroup files take one value per
// write.
func writeCgroupFile(dir, file, value string) error {
	p := filepath.Join(dir, file)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && strings.HasPrefix(file, "cpu.") {
			return unavailable("opening %s: %w (kernel without CFS bandwidth control?)", p, unwrapPathError(err))
		}
		return fmt.Errorf("opening %s: %w", p, unwrapPathError(err))
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, p, unwrapPathError(err))
	}
	return nil
}

// unwrapPathError drops os.PathError's "op path: " prefix, which the callers'
// messages already say better.
func unwrapPathError(err error) error {
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		return pe.Err
	}
	return err
}

// cgroupCPUParent is the directory under which to create quota groups: this
// process's own cgroup in the hierarchy with the cpu controller, v1 if cpu is
// bound there (then v2 cannot have it), else v2 with "+cpu" enabled in the
// parent's cgroup.subtree_control.
func cgroupCPUParent() (dir string, v2 bool, err error) {
	mounts, err := readCgroupMounts("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	own, err := readOwnCgroups("/proc/self/cgroup")
	if err != nil {
		return "", false, err
	}
	for _, m := range mounts {
		if !m.v2 && m.hasCPU {
			return underMount(m, own["cpu"]), false, nil
		}
	}
	for _, m := range mounts {
		if !m.v2 {
			continue
		}
		dir := underMount(m, own[""])
		ctl := filepath.Join(dir, "cgroup.controllers")
		b, err := os.ReadFile(ctl)
		if err != nil {
			return "", false, unavailable("reading %s: %w", ctl, unwrapPathError(err))
		}
		if !hasWord(string(b), "cpu") {
			return "", false, unavailable("cgroup v2 at %s: no cpu controller in %s (%q): not delegated to this cgroup", m.point, ctl, strings.TrimSpace(string(b)))
		}
		sub := filepath.Join(dir, "cgroup.subtree_control")
		if b, err := os.ReadFile(sub); err == nil && hasWord(string(b), "cpu") {
			return dir, true, nil
		}
		if err := writeCgroupFile(dir, "cgroup.subtree_control", "+cpu"); err != nil {
			// EBUSY: a non-root group with processes of its own cannot
			// enable controllers for its children.
			return "", false, unavailable("enabling the cpu controller for children of %s: %w (run from a cgroup without other processes, or enable +cpu there as root)", dir, err)
		}
		return dir, true, nil
	}
	return "", false, unavailable("no cgroup hierarchy with the cpu controller in /proc/self/mountinfo")
}

// cgroupMount is one cgroup or cgroup2 mount.
type cgroupMount struct {
	root, point string // the hierarchy path mounted, and where
	v2, hasCPU  bool
}

// readCgroupMounts lists the cgroup mounts in a mountinfo file (proc(5):
// "id parent maj:min root point options [optional...] - fstype source
// superoptions").
func readCgroupMounts(path string) ([]cgroupMount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, unavailable("reading %s: %w", path, unwrapPathError(err))
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for ln := 1; sc.Scan(); ln++ {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, s := range fields {
			if s == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+3 > len(fields) {
			return nil, fmt.Errorf("%s:%d: malformed mountinfo line %q", path, ln, sc.Text())
		}
		m := cgroupMount{root: unescapeMount(fields[3]), point: unescapeMount(fields[4])}
		switch fields[sep+1] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			m.hasCPU = hasWord(strings.ReplaceAll(fields[sep+3], ",", " "), "cpu")
		default:
			continue
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

// readOwnCgroups maps each v1 controller of /proc/self/cgroup
// ("id:controllers:path") to this process's path in its hierarchy, and ""
// to the v2 path.
func readOwnCgroups(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, unavailable("reading %s: %w", path, unwrapPathError(err))
	}
	own := map[string]string{}
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("%s:%d: malformed line %q", path, i+1, line)
		}
		if parts[1] == "" {
			own[""] = parts[2]
			continue
		}
		for c := range strings.SplitSeq(parts[1], ",") {
			own[c] = parts[2]
		}
	}
	return own, nil
}

// underMount is where hierarchy path p appears under mount m: its mount
// point if p is not inside the mounted root (a namespaced or bind mount).
func underMount(m cgroupMount, p string) string {
	rel, err := filepath.Rel(m.root, p)
	if p == "" || err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return m.point
	}
	dir := filepath.Join(m.point, rel)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return m.point
	}
	return dir
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// hasWord reports whether w is one of the space-separated words of s.
func hasWord(s, w string) bool {
	for f := range strings.FieldsSeq(s) {
		if f == w {
			return true
		}
	}
	return false
}
