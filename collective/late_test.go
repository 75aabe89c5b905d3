package collective

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// A rank that reaches DialMesh late (still loading while the ranks that
// dial it are done: many ranks on few cores) is waited for: a dialer's
// handshake lasts until its context's deadline, not the accepting side's
// bound on a handshake, and a handshake the acceptor dropped unanswered
// (its bound ran out while the dialer got no CPU) is dialled again.
func TestTCPLateAcceptor(t *testing.T) {
	old := handshakeTime
	handshakeTime = 100 * time.Millisecond
	defer func() { handshakeTime = old }()
	lns, addrs := listenLoopback(t, 2)
	ln0, ln1 := lns[0], lns[1]
	ctx := testCtx(t, 10*time.Second)
	type res struct {
		tr  Transport
		err error
	}
	r1 := make(chan res, 1)
	go func() {
		tr, err := DialMesh(ctx, ln1, TCPConfig{Rank: 1, Addrs: addrs, Token: "tok"})
		r1 <- res{tr, err}
	}()
	// Rank 0 drops the first connection after reading its hello, as an
	// acceptor whose handshake bound ran out does...
	c, err := ln0.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 12+nonceSize)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// ...and reaches DialMesh six handshake bounds later.
	time.Sleep(6 * handshakeTime)
	tr0, err := DialMesh(ctx, ln0, TCPConfig{Rank: 0, Addrs: addrs, Token: "tok"})
	if err != nil {
		t.Fatalf("rank 0: %v", err)
	}
	defer tr0.Close()
	got := <-r1
	if got.err != nil {
		t.Fatalf("rank 1 gave up on the late rank 0: %v", got.err)
	}
	defer got.tr.Close()
	comms := worlds([]Transport{tr0, got.tr}, Config{})
	mustAll(t, runRanks(comms, func(c *Comm) error { return checkAllReduce(ctx, c, 1000) }))
}

// A dialer still waiting for a late acceptor gives up when its context is
// cancelled, not at a deadline.
func TestTCPDialerCancelled(t *testing.T) {
	ln0, err := net.Listen("tcp", "127.0.0.1:0") // accepts nothing: a rank that never comes
	if err != nil {
		t.Fatal(err)
	}
	defer ln0.Close()
	ln1, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := DialMesh(ctx, ln1, TCPConfig{Rank: 1, Addrs: []string{ln0.Addr().String(), ln1.Addr().String()}, Token: "tok"})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("mesh built without rank 0")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("DialMesh returned %v after the cancel", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("DialMesh still waiting 5 s after its context was cancelled")
	}
}
