package publisher

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reports        *prometheus.CounterVec
	chunkRequests  *prometheus.CounterVec
	chunkBytes     *prometheus.CounterVec
	notices        prometheus.Counter
	noticesCleared prometheus.Counter
	waves          prometheus.Counter
	wavesFailed    prometheus.Counter
	ticks          prometheus.Counter
	phases         prometheus.Counter
	thresholdTrips prometheus.Counter
	auditErrors    prometheus.Counter
	apiRequests    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "firmcast_publisher_reports_total", Help: "Device reports received, by how they were taken.",
		}, []string{"result"}),
		chunkRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "firmcast_publisher_chunk_requests_total", Help: "Chunk requests received, by outcome.",
		}, []string{"result"}),
		chunkBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "firmcast_publisher_chunk_bytes_total", Help: "Chunk-family message bytes sent, by kind (wave, wave_table, wave_end, repair, parity, unicast, table).",
		}, []string{"kind"}),
		notices:        prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_notices_total", Help: "Update notices published."}),
		noticesCleared: prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_notices_cleared_total", Help: "Retained notices cleared."}),
		waves:          prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_waves_total", Help: "Broadcast waves completed."}),
		wavesFailed:    prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_waves_failed_total", Help: "Broadcast waves ended by an error (sent again after the wave interval)."}),
		ticks:          prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_ticks_total", Help: "Rounds of the campaign loop completed (leader or not)."}),
		phases:         prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_phases_opened_total", Help: "Campaign phases opened after the first."}),
		thresholdTrips: prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_failure_threshold_trips_total", Help: "Campaigns paused or aborted by their failure threshold."}),
		auditErrors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "firmcast_publisher_audit_errors_total", Help: "Audit log appends that failed."}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "firmcast_publisher_api_requests_total", Help: "API requests, by interface and status.",
		}, []string{"api", "status"}),
	}
	for _, c := range []prometheus.Collector{m.reports, m.chunkRequests, m.chunkBytes, m.notices, m.noticesCleared, m.waves, m.wavesFailed, m.ticks, m.phases, m.thresholdTrips, m.auditErrors, m.apiRequests} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
