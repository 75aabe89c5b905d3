package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// nccl is NCCL's function table (libnccl.so.2), loaded on first use like
// the other libraries: a machine without NCCL gets an error naming it.
var nccl struct {
	once sync.Once
	err  error
	path string

	getVersion, getUniqueID, commInitRank, commDestroy, commAbort uintptr
	commGetAsyncError, getErrorString, commCount, commUserRank    uintptr
	allReduce, reduceScatter, allGather, send, recv               uintptr
	groupStart, groupEnd                                          uintptr
}

func loadNCCL() error {
	l := &nccl
	l.once.Do(func() {
		if l.err = loadDriver(); l.err != nil {
			return
		}
		l.path, l.err = loadLibrary("NCCL (libnccl.so.2)", "nccl", []string{"libnccl.so.2", "libnccl.so"}, map[string]*uintptr{
			"ncclGetVersion": &l.getVersion, "ncclGetUniqueId": &l.getUniqueID, "ncclCommInitRank": &l.commInitRank,
			"ncclCommDestroy": &l.commDestroy, "ncclCommAbort": &l.commAbort, "ncclCommGetAsyncError": &l.commGetAsyncError,
			"ncclGetErrorString": &l.getErrorString, "ncclCommCount": &l.commCount, "ncclCommUserRank": &l.commUserRank,
			"ncclAllReduce": &l.allReduce, "ncclReduceScatter": &l.reduceScatter, "ncclAllGather": &l.allGather,
			"ncclSend": &l.send, "ncclRecv": &l.recv, "ncclGroupStart": &l.groupStart, "ncclGroupEnd": &l.groupEnd,
		})
	})
	return l.err
}

// NCCLError is a failed NCCL call.
type NCCLError struct {
	Call   string
	Result int // ncclResult_t
	Msg    string
}

func (e *NCCLError) Error() string {
	return fmt.Sprintf("nccl: %s: %s (%d)", e.Call, e.Msg, e.Result)
}

// ncclInProgress is ncclInProgress: a nonblocking call not finished yet.
const ncclInProgress = 7

//go:uintptrescapes
func ncclCheck(name string, fn uintptr, args ...uintptr) error {
	r := int32(call(fn, args...))
	if r == 0 {
		return nil
	}
	msg := "unknown error"
	if nccl.getErrorString != 0 {
		msg = goString(call(nccl.getErrorString, uintptr(r)))
	}
	return &NCCLError{Call: name, Result: int(r), Msg: msg}
}

// NCCLVersion loads NCCL and returns its version code (e.g. 22703 for
// 2.27.3) and the library's path.
func NCCLVersion() (int, string, error) {
	if err := loadNCCL(); err != nil {
		return 0, "", err
	}
	var v int32
	if err := ncclCheck("ncclGetVersion", nccl.getVersion, uintptr(unsafe.Pointer(&v))); err != nil {
		return 0, "", err
	}
	return int(v), nccl.path, nil
}

// NCCLUniqueID is ncclUniqueId: the rendezvous token that rank 0 creates
// (it names a bootstrap socket in rank 0's process) and every rank passes
// to NewNCCLComm. It travels between processes as bytes.
type NCCLUniqueID [128]byte

// NewNCCLUniqueID creates a communicator's rendezvous token. The process
// that calls it must stay alive until every rank has joined.
func NewNCCLUniqueID() (NCCLUniqueID, error) {
	var id NCCLUniqueID
	if err := loadNCCL(); err != nil {
		return id, err
	}
	err := ncclCheck("ncclGetUniqueId", nccl.getUniqueID, uintptr(unsafe.Pointer(&id[0])))
	return id, err
}

// NCCLComm is one rank's NCCL communicator on the GPU of its Context. Its
// calls enqueue work on the stream they are given and return at once; like
// the Context, use it from one goroutine at a time.
type NCCLComm struct {
	ctx   *Context
	comm  uintptr
	rank  int
	ranks int
}

// NewNCCLComm joins communicator id as rank of ranks on c's GPU. It blocks
// until every rank has joined (NCCL's bootstrap has its own timeouts; a
// rank that never comes is reported by NCCL as a connection error).
func NewNCCLComm(c *Context, id NCCLUniqueID, rank, ranks int) (*NCCLComm, error) {
	if err := loadNCCL(); err != nil {
		return nil, err
	}
	if ranks < 1 || rank < 0 || rank >= ranks {
		return nil, fmt.Errorf("nccl: rank %d of %d: want 0 <= rank < ranks", rank, ranks)
	}
	n := &NCCLComm{ctx: c, rank: rank, ranks: ranks}
	// ncclCommInitRank(ncclComm_t*, int nranks, ncclUniqueId id, int rank):
	// the 128-byte id is passed by value, which the System V ABI puts on
	// the stack (MEMORY class, taking no register), so the integer
	// arguments are comm, nranks and rank in the first three registers and
	// the id's sixteen eightbytes are the call's stack arguments.
	args := make([]uintptr, 0, 6+16)
	args = append(args, uintptr(unsafe.Pointer(&n.comm)), uintptr(ranks), uintptr(rank), 0, 0, 0)
	for i := 0; i < len(id); i += 8 {
		args = append(args, *(*uintptr)(unsafe.Pointer(&id[i])))
	}
	err := c.do(func() error { return ncclCheck("ncclCommInitRank", nccl.commInitRank, args...) })
	if err != nil {
		return nil, err
	}
	var count, me int32
	if err := c.do(func() error {
		return errors.Join(
			ncclCheck("ncclCommCount", nccl.commCount, n.comm, uintptr(unsafe.Pointer(&count))),
			ncclCheck("ncclCommUserRank", nccl.commUserRank, n.comm, uintptr(unsafe.Pointer(&me))))
	}); err != nil {
		n.Abort()
		return nil, err
	}
	if int(count) != ranks || int(me) != rank {
		n.Abort()
		return nil, fmt.Errorf("nccl: communicator reports rank %d of %d, joined as %d of %d", me, count, rank, ranks)
	}
	return n, nil
}

// NCCLType is an element type of NCCL calls (ncclDataType_t).
type NCCLType int

const (
	NCCLUint8   NCCLType = 1
	NCCLInt32   NCCLType = 2
	NCCLFloat32 NCCLType = 7
	NCCLBF16    NCCLType = 9
)

// Size is the element size in bytes.
func (t NCCLType) Size() int {
	switch t {
	case NCCLUint8:
		return 1
	case NCCLBF16:
		return 2
	}
	return 4
}

// NCCLOp is a reduction (ncclRedOp_t).
type NCCLOp int

const (
	NCCLSum NCCLOp = 0
	NCCLAvg NCCLOp = 4
)

// AllReduce reduces count elements of send over every rank into recv on
// every rank (send == recv is in place), on stream s.
func (n *NCCLComm) AllReduce(s Stream, send, recv DevicePtr, count int, t NCCLType, op NCCLOp) error {
	return n.ctx.do(func() error {
		return ncclCheck("ncclAllReduce", nccl.allReduce, uintptr(send), uintptr(recv), uintptr(count), uintptr(t), uintptr(op), n.comm, uintptr(s))
	})
}

// ReduceScatter reduces ranks×count elements of send and leaves block
// Rank() (count elements) of the result in recv, on stream s.
func (n *NCCLComm) ReduceScatter(s Stream, send, recv DevicePtr, count int, t NCCLType, op NCCLOp) error {
	return n.ctx.do(func() error {
		return ncclCheck("ncclReduceScatter", nccl.reduceScatter, uintptr(send), uintptr(recv), uintptr(count), uintptr(t), uintptr(op), n.comm, uintptr(s))
	})
}

// AllGather concatenates every rank's count elements of send into recv
// (ranks×count elements, rank order), on stream s.
func (n *NCCLComm) AllGather(s Stream, send, recv DevicePtr, count int, t NCCLType) error {
	return n.ctx.do(func() error {
		return ncclCheck("ncclAllGather", nccl.allGather, uintptr(send), uintptr(recv), uintptr(count), uintptr(t), n.comm, uintptr(s))
	})
}

// AllToAllV sends sendCounts[p] elements starting at send+sendOffsets[p]
// (element offsets) to rank p and receives recvCounts[p] elements from p
// at recv+recvOffsets[p], as one NCCL group of point-to-point calls on
// stream s: the expert-parallel exchange. Counts must agree pairwise
// (what p sends to me is what I receive from p); zero counts skip the pair.
func (n *NCCLComm) AllToAllV(s Stream, send DevicePtr, sendCounts, sendOffsets []int, recv DevicePtr, recvCounts, recvOffsets []int, t NCCLType) error {
	if len(sendCounts) != n.ranks || len(sendOffsets) != n.ranks || len(recvCounts) != n.ranks || len(recvOffsets) != n.ranks {
		return fmt.Errorf("nccl: all-to-all-v over %d ranks with %d/%d send and %d/%d receive counts/offsets",
			n.ranks, len(sendCounts), len(sendOffsets), len(recvCounts), len(recvOffsets))
	}
	size := t.Size()
	return n.ctx.do(func() error {
		if err := ncclCheck("ncclGroupStart", nccl.groupStart); err != nil {
			return err
		}
		var errs []error
		for p := 0; p < n.ranks; p++ {
			if c := sendCounts[p]; c > 0 {
				errs = append(errs, ncclCheck("ncclSend", nccl.send, uintptr(send.Add(sendOffsets[p]*size)), uintptr(c), uintptr(t), uintptr(p), n.comm, uintptr(s)))
			}
			if c := recvCounts[p]; c > 0 {
				errs = append(errs, ncclCheck("ncclRecv", nccl.recv, uintptr(recv.Add(recvOffsets[p]*size)), uintptr(c), uintptr(t), uintptr(p), n.comm, uintptr(s)))
			}
		}
		// The group must be closed whatever failed inside it.
		errs = append(errs, ncclCheck("ncclGroupEnd", nccl.groupEnd))
		return errors.Join(errs...)
	})
}

// AsyncError reports an error NCCL detected in the background (a peer
// gone, a network failure): callers waiting on a stream poll it so that a
// dead peer is an error rather than a hang.
func (n *NCCLComm) AsyncError() error {
	var r int32
	err := n.ctx.do(func() error {
		return ncclCheck("ncclCommGetAsyncError", nccl.commGetAsyncError, n.comm, uintptr(unsafe.Pointer(&r)))
	})
	if err != nil || r == 0 || r == ncclInProgress {
		return err
	}
	return &NCCLError{Call: "async", Result: int(r), Msg: goString(call(nccl.getErrorString, uintptr(r)))}
}

// Abort tears the communicator down without waiting for outstanding work
// (after a peer failed); Close waits for it. Either may be called once.
func (n *NCCLComm) Abort() error {
	return n.ctx.do(func() error { return ncclCheck("ncclCommAbort", nccl.commAbort, n.comm) })
}

// Close destroys the communicator after its queued work.
func (n *NCCLComm) Close() error {
	return n.ctx.do(func() error { return ncclCheck("ncclCommDestroy", nccl.commDestroy, n.comm) })
}
