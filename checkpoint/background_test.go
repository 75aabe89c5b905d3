package checkpoint

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// One operation at a time; Wait returns the last result, and a failure
// only once; a Wait bounded by a context that ends names what it waited
// for; Cancel reaches the running operation's context.
func TestBackground(t *testing.T) {
	var b Background[int]
	ctx := context.Background()
	release := make(chan struct{})
	if err := b.Start(ctx, func(context.Context) (int, error) { <-release; return 7, nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx, func(context.Context) (int, error) { return 8, nil }); !errors.Is(err, errInFlight) {
		t.Fatalf("second Start while one runs: %v, want errInFlight", err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := b.Wait(short, "the test op"); err == nil || !strings.Contains(err.Error(), "waiting for the test op") {
		t.Fatalf("Wait past its context: %v", err)
	}
	close(release)
	if v, err := b.Wait(ctx, "x"); v != 7 || err != nil {
		t.Fatalf("Wait = %d, %v; want 7, nil", v, err)
	}
	boom := errors.New("boom")
	if err := b.Start(ctx, func(ctx context.Context) (int, error) { <-ctx.Done(); return 0, boom }); err != nil {
		t.Fatal(err)
	}
	b.Cancel()
	if _, err := b.Wait(ctx, "x"); !errors.Is(err, boom) {
		t.Fatalf("Wait after a failure: %v, want boom", err)
	}
	if _, err := b.Wait(ctx, "x"); err != nil {
		t.Fatalf("a failure is returned once; the second Wait gave %v", err)
	}
}
