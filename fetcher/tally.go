package fetcher

import "sync/atomic"

// Tally sums what broker sources saw on their receive paths, across every
// fetch of every source that shares it (BrokerConfig.Tally): a simulated
// fleet's or a benchmark's totals, where reading each source after its
// fetch is not possible. The zero value is ready; safe for concurrent use.
type Tally struct {
	// Shed: chunks and parity chunks dropped on arrival because the
	// receive buffer was full (BrokerSource.Shed).
	Shed atomic.Int64
	// Waited: chunks that arrived at a full receive buffer and waited
	// for room (BrokerSource.Waited).
	Waited atomic.Int64
	// Skipped: chunks and parity chunks dropped on arrival as of no use
	// to the fetch (BrokerSource.Skipped).
	Skipped atomic.Int64
	// BadParity, Rebuilt, Requests, Suppressed: as BrokerSource's.
	BadParity, Rebuilt, Requests, Suppressed atomic.Int64
}

// TallyTotals is a snapshot of a Tally.
type TallyTotals struct {
	Shed       int64 `json:"shed"`
	Waited     int64 `json:"waited"`
	Skipped    int64 `json:"skipped"`
	BadParity  int64 `json:"bad_parity"`
	Rebuilt    int64 `json:"rebuilt"`
	Requests   int64 `json:"requests"`
	Suppressed int64 `json:"suppressed"`
}

// Totals returns the current sums (zero for a nil Tally).
func (t *Tally) Totals() TallyTotals {
	if t == nil {
		return TallyTotals{}
	}
	return TallyTotals{Shed: t.Shed.Load(), Waited: t.Waited.Load(), Skipped: t.Skipped.Load(), BadParity: t.BadParity.Load(),
		Rebuilt: t.Rebuilt.Load(), Requests: t.Requests.Load(), Suppressed: t.Suppressed.Load()}
}
