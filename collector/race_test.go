//go:build race

package collector

// The race detector makes every goroutine several times slower; the load
// test scales itself down rather than measure the detector.
func init() { raceDetector = true }
