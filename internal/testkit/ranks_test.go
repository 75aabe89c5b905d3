package testkit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/moetrain/moetrain/collective"
)

// The ranks run at once on connected transports (an all-reduce needs every
// one of them), each error comes back at its rank, and every transport is
// closed afterwards.
func TestOnRanks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	boom := errors.New("boom")
	seen := make([]collective.Transport, 3)
	errs := OnRanks(3, func(r int, tr collective.Transport) error {
		seen[r] = tr
		buf := []float32{float32(r)}
		if err := collective.NewWorld(tr).AllReduce(ctx, buf, collective.Sum); err != nil {
			return err
		}
		if buf[0] != 3 {
			return fmt.Errorf("sum %v, want 3", buf[0])
		}
		if r == 1 {
			return boom
		}
		return nil
	})
	for r, err := range errs {
		var want error
		if r == 1 {
			want = boom
		}
		if err != want {
			t.Errorf("rank %d: error %v, want %v", r, err, want)
		}
	}
	for r, tr := range seen {
		if err := tr.Send(ctx, (r+1)%3, collective.Header{}); !errors.Is(err, collective.ErrClosed) {
			t.Errorf("rank %d: send after OnRanks returned %v, want %v", r, err, collective.ErrClosed)
		}
	}
}
