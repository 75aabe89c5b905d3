package collective

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// sizesFor keeps the big size to the default config and a few world sizes.
func sizesFor(cfgName string, n int) []int {
	var out []int
	for _, s := range testSizes {
		if s > 5000 && cfgName != "default" {
			continue
		}
		out = append(out, s)
	}
	if cfgName == "default" && (n == 2 || n == 3 || n == 8) {
		out = append(out, 1<<20+3)
	}
	return out
}

func TestAllReduce(t *testing.T) {
	for name, cfg := range testCfgs {
		for n := 1; n <= 8; n++ {
			for _, size := range sizesFor(name, n) {
				for _, op := range []ReduceOp{Sum, Mean} {
					t.Run(fmt.Sprintf("%s/n%d/size%d/%v", name, n, size, op), func(t *testing.T) {
						ts := NewInProcess(n)
						defer closeAllT(ts)
						comms := worlds(ts, cfg)
						want := make([]float32, size)
						for i := range want {
							s := valSum(n, i)
							if op == Mean {
								s /= float32(n)
							}
							want[i] = s
						}
						ctx := testCtx(t, 20*time.Second)
						errs := runRanks(comms, func(c *Comm) error {
							buf := make([]float32, size)
							for i := range buf {
								buf[i] = val(c.Rank(), i)
							}
							if err := c.AllReduce(ctx, buf, op); err != nil {
								return err
							}
							return eqBits(buf, want)
						})
						mustAll(t, errs)
					})
				}
			}
		}
	}
}

// Non-integer values: the result must still be bitwise equal on every rank.
func TestAllReduceBitwiseIdentical(t *testing.T) {
	for _, n := range []int{3, 4, 5, 7} {
		for _, size := range []int{33, 70001} {
			ts := NewInProcess(n)
			comms := worlds(ts, Config{SegmentBytes: 1024})
			out := make([][]float32, n)
			ctx := testCtx(t, 10*time.Second)
			mustAll(t, runRanks(comms, func(c *Comm) error {
				buf := make([]float32, size)
				for i := range buf {
					buf[i] = 1 / float32(1+i+c.Rank()*3)
				}
				out[c.Rank()] = buf
				return c.AllReduce(ctx, buf, Sum)
			}))
			for r := 1; r < n; r++ {
				if err := eqBits(out[r], out[0]); err != nil {
					t.Fatalf("n=%d size=%d: rank %d differs from rank 0: %v", n, size, r, err)
				}
			}
			closeAllT(ts)
		}
	}
}

func TestReduceScatterAllGather(t *testing.T) {
	for name, cfg := range testCfgs {
		for _, n := range []int{1, 2, 3, 4, 5, 7, 8} {
			for _, m := range []int{0, 1, 7, 101, 4099} {
				for _, inPlace := range []bool{false, true} {
					t.Run(fmt.Sprintf("%s/n%d/m%d/inplace=%v", name, n, m, inPlace), func(t *testing.T) {
						ts := NewInProcess(n)
						defer closeAllT(ts)
						comms := worlds(ts, cfg)
						ctx := testCtx(t, 10*time.Second)
						mustAll(t, runRanks(comms, func(c *Comm) error {
							r := c.Rank()
							send := make([]float32, n*m)
							for i := range send {
								send[i] = val(r, i)
							}
							orig := append([]float32(nil), send...)
							var recv []float32
							if inPlace {
								recv = send[r*m : (r+1)*m]
							} else {
								recv = make([]float32, m)
							}
							if err := c.ReduceScatter(ctx, send, recv, Sum); err != nil {
								return err
							}
							for i := range m {
								if s := valSum(n, r*m+i); recv[i] != s {
									return fmt.Errorf("reducescatter[%d] = %v, want %v", i, recv[i], s)
								}
							}
							if !inPlace {
								if err := eqBits(send, orig); err != nil {
									return fmt.Errorf("reducescatter modified send: %v", err)
								}
							}
							// All-gather the reduced blocks back.
							all := make([]float32, n*m)
							src := recv
							if inPlace {
								copy(all[r*m:], recv)
								src = all[r*m : (r+1)*m]
							}
							if err := c.AllGather(ctx, src, all); err != nil {
								return err
							}
							for i := range all {
								if s := valSum(n, i); all[i] != s {
									return fmt.Errorf("allgather[%d] = %v, want %v", i, all[i], s)
								}
							}
							return nil
						}))
					})
				}
			}
		}
	}
}

func TestBroadcast(t *testing.T) {
	for name, cfg := range testCfgs {
		for _, n := range []int{1, 2, 3, 5, 8} {
			for _, size := range []int{0, 1, 7, 101, 70001} {
				for root := 0; root < n; root += max(1, n/3) {
					ts := NewInProcess(n)
					comms := worlds(ts, cfg)
					ctx := testCtx(t, 10*time.Second)
					errs := runRanks(comms, func(c *Comm) error {
						buf := make([]float32, size)
						if c.Rank() == root {
							for i := range buf {
								buf[i] = val(root, i)
							}
						}
						if err := c.Broadcast(ctx, buf, root); err != nil {
							return err
						}
						for i := range buf {
							if buf[i] != val(root, i) {
								return fmt.Errorf("element %d = %v, want %v", i, buf[i], val(root, i))
							}
						}
						return nil
					})
					for r, err := range errs {
						if err != nil {
							t.Fatalf("%s n=%d size=%d root=%d rank %d: %v", name, n, size, root, r, err)
						}
					}
					closeAllT(ts)
				}
			}
		}
	}
}

func TestAllToAll(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8} {
		for _, m := range []int{0, 1, 7, 101, 20011} {
			ts := NewInProcess(n)
			comms := worlds(ts, Config{})
			ctx := testCtx(t, 10*time.Second)
			errs := runRanks(comms, func(c *Comm) error {
				r := c.Rank()
				send := make([]float32, n*m)
				for j := range n {
					for i := range m {
						send[j*m+i] = float32(r*1000000 + j*10000 + i%10000)
					}
				}
				recv := make([]float32, n*m)
				if err := c.AllToAll(ctx, send, recv); err != nil {
					return err
				}
				for j := range n {
					for i := range m {
						if w := float32(j*1000000 + r*10000 + i%10000); recv[j*m+i] != w {
							return fmt.Errorf("from %d element %d = %v, want %v", j, i, recv[j*m+i], w)
						}
					}
				}
				return nil
			})
			for r, err := range errs {
				if err != nil {
					t.Fatalf("n=%d m=%d rank %d: %v", n, m, r, err)
				}
			}
			closeAllT(ts)
		}
	}
}

// count is how many elements rank `from` sends rank `to`: zero for many pairs.
func a2avCount(from, to, n int) int {
	if (from+2*to)%3 == 0 {
		return 0
	}
	return (from*7+to*5)%11 + n
}

func TestAllToAllV(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 6, 8} {
		ts := NewInProcess(n)
		comms := worlds(ts, Config{})
		ctx := testCtx(t, 10*time.Second)
		mustAll(t, runRanks(comms, func(c *Comm) error {
			r := c.Rank()
			sc := make([]int, n)
			rc := make([]int, n)
			var send []float32
			for j := range n {
				sc[j] = a2avCount(r, j, n)
				rc[j] = a2avCount(j, r, n)
				for i := range sc[j] {
					send = append(send, float32(r*1000+j*100+i))
				}
			}
			total := 0
			for _, k := range rc {
				total += k
			}
			recv := make([]float32, total)
			if err := c.AllToAllV(ctx, send, sc, recv, rc); err != nil {
				return err
			}
			off := 0
			for j := range n {
				for i := range rc[j] {
					if w := float32(j*1000 + r*100 + i); recv[off+i] != w {
						return fmt.Errorf("from %d element %d = %v, want %v", j, i, recv[off+i], w)
					}
				}
				off += rc[j]
			}
			return nil
		}))
		closeAllT(ts)
	}
}

func TestSendRecvAndRingExchange(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5} {
		ts := NewInProcess(n)
		comms := worlds(ts, Config{})
		ctx := testCtx(t, 10*time.Second)
		mustAll(t, runRanks(comms, func(c *Comm) error {
			r := c.Rank()
			next, prev := (r+1)%n, (r+n-1)%n
			mk := func(tag, size int) []float32 {
				b := make([]float32, size)
				for i := range b {
					b[i] = float32(tag*100000 + i)
				}
				return b
			}
			// Ring exchange: sizes differ by direction to catch mix-ups.
			fromPrev := make([]float32, 5)
			fromNext := make([]float32, 9)
			if err := c.RingExchange(ctx, mk(r, 5), mk(100+r, 9), fromPrev, fromNext); err != nil {
				return err
			}
			if err := eqBits(fromPrev, mk(prev, 5)); err != nil {
				return fmt.Errorf("fromPrev: %v", err)
			}
			if err := eqBits(fromNext, mk(100+next, 9)); err != nil {
				return fmt.Errorf("fromNext: %v", err)
			}
			if n == 1 {
				return nil
			}
			// Point to point: two sends to next, matched in order, async.
			a, b := make([]float32, 3), make([]float32, 4)
			ra := c.RecvAsync(a, prev)
			rb := c.RecvAsync(b, prev)
			if err := c.Send(ctx, mk(r, 3), next); err != nil {
				return err
			}
			if err := c.SendAsync(mk(r+50, 4), next).Wait(ctx); err != nil {
				return err
			}
			if err := WaitAll(ctx, ra, rb); err != nil {
				return err
			}
			if err := eqBits(a, mk(prev, 3)); err != nil {
				return err
			}
			return eqBits(b, mk(prev+50, 4))
		}))
		closeAllT(ts)
	}
}

// Sub-groups of a 2×4 mesh: rows and columns reduce concurrently (async),
// several operations in flight on each.
func TestSubGroupsConcurrent(t *testing.T) {
	ts := NewInProcess(8)
	defer closeAllT(ts)
	subGroupsConcurrent(t, ts)
}

// subGroupsConcurrent runs all-reduces on the rows, the columns and the
// whole of a 2×4 grid of the 8 transports at once, and checks exact sums.
func subGroupsConcurrent(t *testing.T, ts []Transport) {
	const rows, cols = 2, 4
	comms := worlds(ts, Config{SegmentBytes: 512})
	ctx := testCtx(t, 20*time.Second)
	mustAll(t, runRanks(comms, func(w *Comm) error {
		r := w.Rank()
		row, col := r/cols, r%cols
		var rowRanks, colRanks []int
		for c := range cols {
			rowRanks = append(rowRanks, row*cols+c)
		}
		for rr := range rows {
			colRanks = append(colRanks, rr*cols+col)
		}
		rc, err := w.Sub(rowRanks)
		if err != nil {
			return err
		}
		cc, err := w.Sub(colRanks)
		if err != nil {
			return err
		}
		if rc.Size() != cols || rc.Rank() != col || cc.Size() != rows || cc.Rank() != row {
			return fmt.Errorf("sub ranks: row comm %d/%d col comm %d/%d", rc.Rank(), rc.Size(), cc.Rank(), cc.Size())
		}
		const k, size = 3, 5003
		var reqs []*Request
		var bufs [][]float32
		for j := range k {
			for _, c := range []*Comm{rc, cc, w} {
				b := make([]float32, size+j)
				for i := range b {
					b[i] = val(r, i+j)
				}
				bufs = append(bufs, b)
				reqs = append(reqs, c.AllReduceAsync(b, Sum))
			}
		}
		if err := WaitAll(ctx, reqs...); err != nil {
			return err
		}
		idx := 0
		for j := range k {
			for _, members := range [][]int{rowRanks, colRanks, {0, 1, 2, 3, 4, 5, 6, 7}} {
				b := bufs[idx]
				idx++
				for i := range b {
					var s float32
					for _, q := range members {
						s += val(q, i+j)
					}
					if b[i] != s {
						return fmt.Errorf("op %d on %v element %d = %v, want %v", j, members, i, b[i], s)
					}
				}
			}
		}
		return nil
	}))
}

func TestSubValidation(t *testing.T) {
	ts := NewInProcess(4)
	defer closeAllT(ts)
	w := NewWorld(ts[1])
	for _, bad := range [][]int{{}, {0, 2}, {1, 1}, {1, 4}, {-1, 1}} {
		if _, err := w.Sub(bad); err == nil {
			t.Errorf("Sub(%v) on rank 1: want error", bad)
		}
	}
	if err := w.AllReduce(context.Background(), nil, ReduceOp(9)); err == nil {
		t.Error("unknown reduce op accepted")
	}
	if err := w.AllToAllV(context.Background(), make([]float32, 3), []int{1, 1, 1, 1}, nil, []int{0, 0, 0, 0}); err == nil {
		t.Error("alltoallv with counts not matching the buffer accepted")
	}
}

func TestShapedCorrect(t *testing.T) {
	const n = 4
	inner := NewInProcess(n)
	ts := make([]Transport, n)
	for i := range ts {
		ts[i] = NewShaped(inner[i], LinkShape{From: -1, To: -1, Bandwidth: 1e9, Latency: 20 * time.Microsecond})
	}
	defer closeAllT(ts)
	comms := worlds(ts, Config{})
	ctx := testCtx(t, 10*time.Second)
	mustAll(t, runRanks(comms, func(c *Comm) error {
		if err := checkAllReduce(ctx, c, 100003); err != nil {
			return err
		}
		return nil
	}))
}

// The pacer books bytes back to back at the configured rate.
func TestPacerSchedule(t *testing.T) {
	p := &pacer{bw: 1e6}
	t0 := p.reserve(1000) // 1 ms
	t1 := p.reserve(2000) // 2 ms more, queued behind the first
	if d := t1.Sub(t0); d != 2*time.Millisecond {
		t.Fatalf("second frame finishes %v after the first, want 2ms", d)
	}
}
