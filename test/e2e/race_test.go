//go:build race

package e2e

// raceEnabled makes the exporter binary a race-detector build when the test
// itself runs with -race, so that a race in a real scrape shows up.
const raceEnabled = true
