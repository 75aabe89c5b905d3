package dashboard

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

//go:embed index.html
var indexHTML []byte

// csp lets the page run its own inline script and style and fetch only
// from its own origin: nothing external is loaded.
const csp = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"

// Handler serves the dashboard of s: the page on /, its data on
// /api/state (a Snapshot as JSON), and, when prom is not nil, prom on
// /metrics, so that one address can serve all three. Other paths are 404,
// other methods than GET and HEAD 405.
func Handler(s *State, prom http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, _ *http.Request) {
		b, err := json.Marshal(s.Snapshot())
		if err != nil { // Num keeps every value encodable; a failure is a bug
			http.Error(w, "encode state: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(b)
	})
	if prom != nil {
		mux.Handle("GET /metrics", prom)
	}
	return mux
}
