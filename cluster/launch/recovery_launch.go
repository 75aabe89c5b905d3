package launch

import (
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
)

// procPool is the local launcher's worker processes: one slot per worker
// (its certificate and log files), holding the slot's current process. A
// process that exits with an error while the job runs is reported to the
// coordinator; a process the coordinator evicts is killed and, when asked,
// replaced by a new process in its slot.
type procPool struct {
	cfg   LaunchConfig
	token string
	certs []pki.Files
	coord *cluster.Coordinator
	addr  string

	mu       sync.Mutex
	slots    []*proc // current process of each slot
	every    []*proc // every process started, in start order
	pgid     int
	jobOver  chan struct{}
	overOnce sync.Once
}

// startAll starts one process per slot.
func (pp *procPool) startAll() error {
	for i := 0; i < pp.cfg.Workers; i++ {
		if _, err := pp.start(i); err != nil {
			return err
		}
	}
	return nil
}

// start starts slot i's process and watches it.
func (pp *procPool) start(i int) (*proc, error) {
	pp.mu.Lock()
	pgid := pp.pgid
	pp.mu.Unlock()
	if pp.ended() {
		return nil, fmt.Errorf("start worker %d: the job has ended", i)
	}
	p, err := startWorker(pp.cfg, i, pgid, pp.addr, pp.token, pp.certs[i])
	if err != nil && pgid != 0 {
		// The group is gone (every member exited): lead a new one.
		p, err = startWorker(pp.cfg, i, 0, pp.addr, pp.token, pp.certs[i])
		pgid = 0
	}
	if err != nil {
		return nil, err
	}
	pp.mu.Lock()
	if pp.ended() { // the job ended while it started: the launcher no longer waits for it
		pp.mu.Unlock()
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		p.out.Close()
		return nil, fmt.Errorf("start worker %d: the job has ended", i)
	}
	if pgid == 0 {
		pp.pgid = p.cmd.Process.Pid
	}
	for len(pp.slots) <= i {
		pp.slots = append(pp.slots, nil)
	}
	pp.slots[i] = p
	pp.every = append(pp.every, p)
	pp.mu.Unlock()
	go pp.watch(p)
	return p, nil
}

// watch reports p's exit while the job runs: without recovery it fails the
// job now rather than after the join timeout (as before recovery existed);
// with recovery the coordinator decides (ProcessExited).
func (pp *procPool) watch(p *proc) {
	select {
	case <-p.done:
	case <-pp.jobOver:
		return
	}
	if p.exit.ExitCode == 0 {
		return
	}
	reason := fmt.Sprintf("worker process %d (pid %d) exited with %s; see %s", p.idx, p.exit.Pid, exitText(p.exit), p.log)
	if pp.cfg.Recovery.MaxRestarts == 0 {
		pp.coord.Abandon(reason)
		return
	}
	go pp.coord.Submit(cluster.ProcessExited{Pid: p.exit.Pid, Reason: reason})
}

// evict carries out the coordinator's Evict (on its loop: the work is done
// in the background): kill the slot's process if it is x's, and start a
// new one in that slot (or in any slot whose process has exited, when x
// names none) if asked.
func (pp *procPool) evict(x cluster.Evict) {
	go func() {
		slot := -1
		pp.mu.Lock()
		for i, p := range pp.slots {
			if x.Pid != 0 && p.exit.Pid == x.Pid {
				slot = i
			}
		}
		if slot < 0 && x.Pid == 0 {
			for i, p := range pp.slots {
				if exited(p) && !pp.claimed(i) {
					slot = i
					break
				}
			}
		}
		var old *proc
		if slot >= 0 {
			old = pp.slots[slot]
			pp.slots[slot] = &proc{idx: slot, done: closedChan(), exit: cluster.WorkerExit{Index: slot, Pid: -1}} // claimed
		}
		pp.mu.Unlock()
		if slot < 0 {
			if x.Replace {
				pp.cfg.Log.Error().Int("pid", x.Pid).Msg("recovery: no slot to start a replacement worker in")
			}
			return
		}
		if !exited(old) {
			_ = old.cmd.Process.Signal(syscall.SIGKILL)
		}
		select {
		case <-old.done:
		case <-time.After(pp.cfg.Grace):
			pp.cfg.Log.Error().Int("pid", old.exit.Pid).Msg("recovery: an evicted worker process did not exit after SIGKILL")
		}
		if !x.Replace || pp.ended() {
			pp.mu.Lock()
			pp.slots[slot] = old
			pp.mu.Unlock()
			return
		}
		p, err := pp.start(slot)
		if err != nil {
			pp.mu.Lock()
			pp.slots[slot] = old
			pp.mu.Unlock()
			pp.cfg.Log.Error().Err(err).Int("slot", slot).Msg("recovery: could not start a replacement worker")
			return
		}
		pp.cfg.Log.Warn().Int("slot", slot).Int("pid", p.exit.Pid).Int("replaces", old.exit.Pid).Msg("recovery: replacement worker started")
	}()
}

// claimed reports whether slot i is taken by a replacement being started
// (pp.mu held).
func (pp *procPool) claimed(i int) bool { return pp.slots[i].exit.Pid == -1 }

func exited(p *proc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// over marks the job as ended: exits are no longer reported and no
// replacement starts.
func (pp *procPool) over() { pp.overOnce.Do(func() { close(pp.jobOver) }) }

func (pp *procPool) ended() bool {
	select {
	case <-pp.jobOver:
		return true
	default:
		return false
	}
}

// all returns every process started so far.
func (pp *procPool) all() []*proc {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return append([]*proc(nil), pp.every...)
}
