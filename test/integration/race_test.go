//go:build race

package integration

// raceEnabled makes the exporter binary a race-detector build when the
// tests themselves run with -race, so that races in real probes show up.
const raceEnabled = true
