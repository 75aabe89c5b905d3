//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"image"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moetrain/moetrain/cluster"
)

var dashboardShot = flag.String("dashboard-shot", "", "also write TestDashboardChromium's screenshot to this PNG file")

// The colours the page draws the curves in (dashboard/index.html).
var (
	trainBlue = [3]int{0x1f, 0x77, 0xb4}
	valOrange = [3]int{0xff, 0x7f, 0x0e}
	tpsGreen  = [3]int{0x2c, 0xa0, 0x2c}
)

// chromiumBinary finds Debian's chromium (installed by .ci/run), else skips.
func chromiumBinary(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not installed: the dashboard test needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
	return ""
}

// runChromium runs headless chromium with args, its profile in a fresh
// directory, and returns its stdout; the whole process group is killed
// when it has not finished within d.
func runChromium(t *testing.T, bin string, d time.Duration, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	base := []string{"--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
		"--no-default-browser-check", "--disable-extensions", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--mute-audio", "--hide-scrollbars", "--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("chromium %v did not finish within %v; stderr:\n%s", args, d, stderr.String())
	}
	if err != nil {
		t.Fatalf("chromium %v: %v; stderr:\n%s", args, err, stderr.String())
	}
	t.Logf("chromium %s: %.1f s", args[0], time.Since(start).Seconds())
	return stdout.Bytes()
}

// apiState is the part of /api/state the test polls.
type apiState struct {
	Phase string `json:"phase"`
	Step  int    `json:"step"`
	Curve []struct {
		ValLoss *float64 `json:"val_loss"`
	} `json:"curve"`
}

func getState(url string) (apiState, error) {
	var s apiState
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url + "api/state")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /api/state: %s", resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// colourPixels counts the pixels of img within a small distance of c.
func colourPixels(img image.Image, c [3]int) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			d := abs(int(r>>8)-c[0]) + abs(int(g>>8)-c[1]) + abs(int(bl>>8)-c[2])
			if d <= 12 {
				n++
			}
		}
	}
	return n
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

var (
	attrRE = regexp.MustCompile(`([a-z-]+)="([^"]*)"`)
	rowRE  = regexp.MustCompile(`<tr class="(point|worker|load)"([^>]*)>`)
	statRE = regexp.MustCompile(`<span id="status"([^>]*)>`)
)

// domRows returns the data-* attributes of the page's rows of class kind.
func domRows(dom, kind string) []map[string]string {
	var out []map[string]string
	for _, m := range rowRE.FindAllStringSubmatch(dom, -1) {
		if m[1] != kind {
			continue
		}
		row := map[string]string{}
		for _, a := range attrRE.FindAllStringSubmatch(m[2], -1) {
			row[a[1]] = html.UnescapeString(a[2])
		}
		out = append(out, row)
	}
	return out
}

// sameFloat reports whether the page's text of a number is exactly want
// (the page writes JavaScript's shortest round-trip form).
func sameFloat(got string, want float64) bool {
	f, err := strconv.ParseFloat(got, 64)
	return err == nil && f == want
}

// TestDashboardChromium runs `coordinator launch --http 127.0.0.1:0` on a
// long job, takes a screenshot of the dashboard in headless chromium while
// it runs (the curves' colours must be drawn), stops the job with Ctrl-C,
// and, while --http-linger keeps the page up, compares the data the page
// rendered (its curve, worker and expert-load tables) with summary.json.
func TestDashboardChromium(t *testing.T) {
	bin := chromiumBinary(t)
	job := tinyTrain(20, 40, 2, 1)
	run := filepath.Join(t.TempDir(), "run")
	p := start(t, "coordinator launch", nil, "launch", "--workers", "2", "--config", writeJobText(t, job), "--steps", "1000000",
		"--run-dir", run, "--no-bar", "--http", "127.0.0.1:0", "--http-linger", "60s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	line, err := p.waitLine(ctx, "dashboard on http://")
	if err != nil {
		t.Fatal(err)
	}
	url := line[strings.Index(line, "http://"):]
	// Run until the curve has two validation points.
	for {
		s, err := getState(url)
		vals := 0
		for _, pt := range s.Curve {
			if pt.ValLoss != nil {
				vals++
			}
		}
		if err == nil && s.Phase == "running" && vals >= 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no second validation point within 30 s: %+v, %v", s, err)
		case <-time.After(50 * time.Millisecond):
		}
	}

	shot := filepath.Join(t.TempDir(), "dashboard.png")
	runChromium(t, bin, 45*time.Second, "--screenshot="+shot, "--window-size=1280,1000", "--virtual-time-budget=1000", url)
	if s, err := getState(url); err != nil || s.Phase != "running" {
		t.Fatalf("after the screenshot: %+v, %v; the job of a million steps should still run", s, err)
	}
	b, err := os.ReadFile(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if *dashboardShot != "" {
		if err := os.WriteFile(*dashboardShot, b, 0o644); err != nil {
			t.Error(err)
		}
	}
	if sz := img.Bounds().Size(); sz.X != 1280 || sz.Y != 1000 {
		t.Errorf("screenshot %v, want 1280×1000", sz)
	}
	// The legend's keys are 14×3 pixels of each colour: the curves must
	// add far more.
	for _, c := range []struct {
		what string
		rgb  [3]int
		min  int
	}{{"training loss", trainBlue, 300}, {"validation loss", valOrange, 100}, {"tokens/s", tpsGreen, 300}} {
		n := colourPixels(img, c.rgb)
		t.Logf("screenshot: %d pixels of the %s colour", n, c.what)
		if n < c.min {
			t.Errorf("screenshot: %d pixels of the %s colour %v, want ≥ %d (the curve is not drawn)", n, c.what, c.rgb, c.min)
		}
	}

	// Ctrl-C stops the job; --http-linger keeps the dashboard up.
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopCancel()
	if _, err := p.waitLine(stopCtx, "still serving for"); err != nil {
		t.Fatal(err)
	}
	sum := readSummary(t, run)
	if sum.Phase != cluster.PhaseStopped {
		t.Fatalf("summary: phase %s, want stopped", sum.Phase)
	}
	dom := string(runChromium(t, bin, 45*time.Second, "--dump-dom", "--virtual-time-budget=1000", url))
	checkDOM(t, dom, sum)

	// A second Ctrl-C ends the wait; the port is closed.
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(20 * time.Second); code == 0 {
		t.Errorf("interrupted launch exited 0")
	}
	if c, err := net.DialTimeout("tcp", strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/"), time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the launch exited", url)
	}
}

// checkDOM compares the page's rendered data with summary.json: the phase,
// every curve point (step, loss, tokens/s, validation loss, bit for bit),
// the worker table and the expert-load history at the steps the workers
// logged.
func checkDOM(t *testing.T, dom string, sum cluster.Summary) {
	t.Helper()
	m := statRE.FindStringSubmatch(dom)
	if m == nil || !strings.Contains(m[1], `data-phase="`+string(sum.Phase)+`"`) {
		t.Errorf("page status %q, want phase %s", m, sum.Phase)
	}
	points := domRows(dom, "point")
	if len(points) != len(sum.Curve) || len(points) < 3 {
		t.Fatalf("page curve: %d points, summary.json: %d", len(points), len(sum.Curve))
	}
	vals := 0
	for i, want := range sum.Curve {
		got := points[i]
		ok := got["data-step"] == strconv.Itoa(want.Step) && sameFloat(got["data-loss"], want.Loss) &&
			sameFloat(got["data-tps"], want.TokensPerSec)
		v, hasV := got["data-val"]
		if want.ValLoss != nil {
			vals++
			ok = ok && hasV && sameFloat(v, *want.ValLoss)
		} else {
			ok = ok && !hasV
		}
		if !ok {
			t.Errorf("curve point %d: page %v, summary.json %+v (val %v)", i, got, want, want.ValLoss)
		}
	}
	if vals < 2 || vals == len(points) {
		t.Errorf("curve: %d validation points of %d", vals, len(points))
	}
	workers := domRows(dom, "worker")
	if len(workers) != len(sum.Status.Workers) || len(workers) != 2 {
		t.Fatalf("page workers %v, summary.json %+v", workers, sum.Status.Workers)
	}
	for i, w := range sum.Status.Workers {
		got := workers[i]
		if got["data-id"] != w.Info.ID || got["data-host"] != w.Info.Host || got["data-rank"] != strconv.Itoa(w.Rank) ||
			got["data-state"] != w.State || got["data-step"] != strconv.Itoa(w.Step) ||
			!sameFloat(got["data-loss"], w.Loss) || !sameFloat(got["data-tps"], w.TokensPerSec) {
			t.Errorf("worker %d: page %v, summary.json %+v", i, got, w)
		}
	}
	// Expert load: every step the page shows was logged by the workers
	// (log_every 1), the newest possibly excepted (a report can outrun the
	// log line at the stop), with the same counts.
	logged := map[int][][]int{}
	for _, pt := range sum.ExpertLoad {
		logged[pt.Step] = pt.Layers
	}
	loads := domRows(dom, "load")
	newest := 0
	for _, row := range loads {
		s, _ := strconv.Atoi(row["data-step"])
		newest = max(newest, s)
	}
	steps, matched := map[string]bool{}, 0
	for _, row := range loads {
		steps[row["data-step"]] = true
		step, _ := strconv.Atoi(row["data-step"])
		layer, _ := strconv.Atoi(row["data-layer"])
		want, ok := logged[step]
		if !ok || layer >= len(want) {
			if step != newest {
				t.Errorf("page expert load at step %d layer %d: not in summary.json", step, layer)
			}
			continue
		}
		var ws []string
		for _, n := range want[layer] {
			ws = append(ws, strconv.Itoa(n))
		}
		if got := row["data-load"]; got != strings.Join(ws, ",") {
			t.Errorf("expert load step %d layer %d: page %s, summary.json %v", step, layer, got, want[layer])
		}
		matched++
	}
	if len(steps) < 2 || matched < 2*2 {
		t.Errorf("page expert load: %d rows over %d steps, %d matched summary.json", len(loads), len(steps), matched)
	}
	t.Logf("page: %d curve points (%d validation), %d workers, %d expert-load rows over %d steps: as summary.json",
		len(points), vals, len(workers), len(loads), len(steps))
}

// TestDashboardAddrBusy: an --http address that is taken fails launch and
// serve at once, naming the flag, before any worker is started.
func TestDashboardAddrBusy(t *testing.T) {
	checkBusyAddrFails(t, "--http", "address already in use (pick another --http)")
}
