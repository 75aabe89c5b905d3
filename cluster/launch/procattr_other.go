//go:build unix && !linux

package launch

import "syscall"

// WorkerProcAttr puts a worker in process group pgid (0: a new group led by
// the worker). This platform has no parent-death signal: a launcher killed
// by SIGKILL leaves its workers running (a clean exit still stops them).
func WorkerProcAttr(pgid int) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pgid: pgid}
}
