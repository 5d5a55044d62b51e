package prober

import "syscall"

// setQuickACK asks Linux to acknowledge the next segments at once rather
// than after its delayed-ACK timer (40 ms at least). The kernel falls back
// into delaying as soon as we send again, so this is repeated before every
// reply. An error only costs the optimisation.
func setQuickACK(fd uintptr) {
	_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
}
