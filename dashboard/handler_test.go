package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/moetrain/moetrain/metrics"
)

func get(t *testing.T, h http.Handler, method, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	res := rec.Result()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// observed is a Metrics of limits lim with a dashboard State of the same
// limits observing it.
func observed(t *testing.T, lim metrics.Limits) (*metrics.Metrics, *State) {
	t.Helper()
	m, err := metrics.New(lim)
	if err != nil {
		t.Fatal(err)
	}
	s := New(lim)
	m.AddObserver(s)
	return m, s
}

// TestHandler: the page, its data, /metrics when given, and nothing else.
func TestHandler(t *testing.T) {
	m, s := observed(t, metrics.Limits{Ranks: 1, Layers: 1, Experts: 2})
	if err := m.SetJob(metrics.Job{Phase: "running", Step: 4, TotalSteps: 9, Loss: 3}); err != nil {
		t.Fatal(err)
	}
	h := Handler(s, m.Handler())

	res, body := get(t, h, "GET", "/")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(res.Header.Get("Content-Security-Policy"), "connect-src 'self'") || !strings.Contains(body, `fetch("api/state"`) {
		t.Fatalf("GET /: %s %v\n%.200s", res.Status, res.Header, body)
	}
	res, body = get(t, h, "GET", "/api/state")
	var snap Snapshot
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" || res.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /api/state: %s %v", res.Status, res.Header)
	}
	if err := json.Unmarshal([]byte(body), &snap); err != nil || snap.Step != 4 || snap.Phase != "running" || len(snap.Curve) != 1 {
		t.Fatalf("GET /api/state: %v %s", err, body)
	}
	if res, body = get(t, h, "GET", "/metrics"); res.StatusCode != 200 || !strings.Contains(body, "moetrain_step 4") {
		t.Errorf("GET /metrics: %s\n%.300s", res.Status, body)
	}
	if res, _ = get(t, h, "HEAD", "/"); res.StatusCode != 200 {
		t.Errorf("HEAD /: %s", res.Status)
	}
	for _, c := range []struct {
		method, path string
		code         int
	}{{"POST", "/", 405}, {"POST", "/api/state", 405}, {"GET", "/index.html", 404}, {"GET", "/api/state/x", 404}} {
		if res, _ := get(t, h, c.method, c.path); res.StatusCode != c.code {
			t.Errorf("%s %s: %s, want %d", c.method, c.path, res.Status, c.code)
		}
	}
	if res, _ := get(t, Handler(s, nil), "GET", "/metrics"); res.StatusCode != 404 {
		t.Errorf("GET /metrics without metrics: %s", res.Status)
	}
}

// TestPageSelfContained: the page loads nothing from elsewhere (it must
// work offline): no external URL, no src or href attribute, no import.
func TestPageSelfContained(t *testing.T) {
	page := string(indexHTML)
	for _, re := range []string{`https?://`, `(?i)\bsrc\s*=`, `(?i)\bhref\s*=`, `\bimport\b`, `@import`, `url\(`} {
		if loc := regexp.MustCompile(re).FindStringIndex(page); loc != nil {
			t.Errorf("page has %q at byte %d: %q", re, loc[0], page[loc[0]:min(len(page), loc[1]+40)])
		}
	}
	// The data the e2e test reads from the DOM is written by the script.
	for _, want := range []string{`"data-step"`, `"data-loss"`, `"data-tps"`, `"data-val"`, `"data-id"`, `"data-host"`, `"data-state"`, `"data-load"`, `dataset.phase`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}
