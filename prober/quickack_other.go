//go:build !linux

package prober

// setQuickACK does nothing where TCP_QUICKACK does not exist.
func setQuickACK(uintptr) {}
