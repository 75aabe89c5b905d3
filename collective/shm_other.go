//go:build !linux

package collective

import (
	"context"
	"errors"
	"net"
)

// Shared-memory rings need Linux (mmap of /dev/shm, futex): elsewhere no
// offer is made or taken, and every pair stays on TCP.

var errNoShm = errors.New("shared-memory rings need Linux")

type shmFile struct {
	name   string
	cookie [16]byte
}

func createShm(int) (*shmFile, error)                    { return nil, errNoShm }
func openShm(string, uint64, [16]byte) (*shmFile, error) { return nil, errNoShm }
func (f *shmFile) unlink()                               {}
func (f *shmFile) release()                              {}
func (f *shmFile) link(bool) *shmLink                    { return nil }

type shmLink struct{}

func (l *shmLink) Read([]byte) (int, error)                           { return 0, errNoShm }
func (l *shmLink) writeFrame(context.Context, []byte, [][]byte) error { return errNoShm }
func (l *shmLink) shutdown(error)                                     {}
func (l *shmLink) setBell(net.Conn)                                   {}
func (l *shmLink) room() uint64                                       { return 0 }
func (l *shmLink) unmap()                                             {}
