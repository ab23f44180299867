package broker

// NoticeReadsIdle reports whether no background read of a retained
// notice is running on t (tests wait on it before checking that nothing
// more arrives).
func NoticeReadsIdle(t *NATSTransport) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for s := range t.subs {
		if s.last != nil && !s.last.idle() {
			return false
		}
	}
	return true
}
