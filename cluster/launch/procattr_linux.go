//go:build linux

package launch

import "syscall"

// WorkerProcAttr puts a worker in process group pgid (0: a new group led by
// the worker) and has the kernel kill it when this process dies, even by
// SIGKILL.
func WorkerProcAttr(pgid int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pgid: pgid, Pdeathsig: syscall.SIGKILL}
}
