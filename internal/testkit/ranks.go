package testkit

import (
	"sync"

	"github.com/moetrain/moetrain/collective"
)

// OnRanks runs fn concurrently on n ranks joined by in-process transports
// (collective.NewInProcess), each given its rank and transport, closes each
// rank's transport when its fn returns, and returns the ranks' errors in
// rank order.
func OnRanks(n int, fn func(r int, t collective.Transport) error) []error {
	ts := collective.NewInProcess(n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			defer ts[r].Close()
			errs[r] = fn(r, ts[r])
		})
	}
	wg.Wait()
	return errs
}
