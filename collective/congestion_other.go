//go:build !linux

package collective

import (
	"errors"
	"syscall"
)

// setCongestion: choosing the congestion control (TCP_CONGESTION) is
// implemented on Linux only; elsewhere the default choice keeps the
// system's and an explicit one is refused.
func setCongestion(_ syscall.RawConn, choice string) error {
	if choice == "" || choice == CongestionSystem {
		return nil
	}
	return errors.New("collective: choosing the TCP congestion control needs Linux")
}

func congestionOf(syscall.RawConn) (string, error) {
	return "", errors.New("collective: TCP_CONGESTION needs Linux")
}

// CheckCongestion reports whether choice may be used here (see setCongestion).
func CheckCongestion(choice string) error { return setCongestion(nil, choice) }
