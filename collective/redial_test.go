package collective

import (
	"context"
	"net"
	"testing"
	"time"
)

// A listener whose mesh was abandoned (ctx cancelled while it waited for a
// peer) builds the next mesh: the deadline that unblocked its Accept never
// outlives the abandoned DialMesh. A job's ranks dial again on the same
// listeners after a recovery.
func TestDialMeshAgainAfterCancel(t *testing.T) {
	lns := make([]net.Listener, 2)
	addrs := make([]string, 2)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	for round := 0; round < 300; round++ {
		// Rank 0 waits for rank 1, which never comes: cancelled.
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(time.Millisecond); cancel() }()
		if tr, err := DialMesh(ctx, lns[0], TCPConfig{Rank: 0, Addrs: addrs, Token: "old generation"}); err == nil {
			tr.Close()
			t.Fatalf("round %d: a mesh without rank 1 was built", round)
		}
		// Both ranks now: the mesh is built.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
		errs := make(chan error, 2)
		for r := range 2 {
			go func() {
				tr, err := DialMesh(ctx2, lns[r], TCPConfig{Rank: r, Addrs: addrs, Token: "new generation"})
				if err == nil {
					tr.Close()
				}
				errs <- err
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: mesh after a cancelled one: %v", round, err)
			}
		}
		cancel2()
	}
}
