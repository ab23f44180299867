//go:build race

package delta

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// zstd's pooled decoder tables are allocated again for most frames and
// allocation totals say nothing about Apply.
const raceEnabled = true
