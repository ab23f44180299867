package deviceagent

import (
	"bytes"
	"context"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// onNotice handles one message from a notice or announcement topic.
//
// Order: decode; authenticate (the notice's signature by the campaign
// authority, Config.NoticeTrust, covering every field); check the target
// (this device, or its class). Until all three pass nothing in the notice
// is trusted: it is not recorded, not marked done, and its campaign is
// never named in a report. Its refusal is a security event (a
// rate-limited security report, see securityEvent), so a forged, replayed
// or misrouted notice cannot block, fail or stall the campaign it names.
func (a *Agent) onNotice(ctx context.Context, b []byte) {
	if len(b) == 0 {
		return // a cleared retained notice
	}
	var n schemas.UpdateNotice
	if err := schemas.Decode(b, &n); err != nil {
		a.securityEvent(ctx, schemas.CodeMalformed, fmt.Sprintf("notice refused: %v", err))
		return
	}
	if code, err := a.authenticate(&n); err != nil {
		a.securityEvent(ctx, code, fmt.Sprintf("notice naming campaign %q refused: %v", n.Campaign, err))
		return
	}
	// From here on the notice is the campaign authority's, for this device.
	k := key(n.Campaign, n.Image)
	a.mu.Lock()
	done := a.st.done(k)
	busy := a.st.busy()
	same := a.st.Campaign == n.Campaign && bytes.Equal(a.st.Image, n.Image)
	cur := a.st.Campaign
	final, code, text := a.st.State, a.st.Code, a.st.Text
	a.mu.Unlock()
	switch {
	case done && same:
		// The backend sends a notice again when it may have missed the
		// outcome (a new leader, reports lost while no publisher
		// listened): answer with the outcome, do nothing else.
		a.log.Debug("notice already handled; reporting its outcome again", "campaign", n.Campaign, "state", final)
		_ = a.reportFor(ctx, n.Campaign, final, code, text)
		return
	case done:
		a.log.Debug("notice already handled", "campaign", n.Campaign)
		return
	case busy && same:
		return // a repeated (retained) notice of the update in progress
	case busy:
		// A genuine notice of another campaign: not an outcome of it, the
		// device will take it when it is free (the backend sends it again
		// to a device that stays silent on it).
		a.log.Info("busy; deferring a notice", "campaign", n.Campaign, "busy_with", cur)
		_ = a.reportFor(ctx, n.Campaign, schemas.StateDeferred, schemas.CodeConflict, fmt.Sprintf("busy with campaign %s", cur))
		return
	}
	a.mu.Lock()
	a.st = Record{
		V: 1, Counter: a.st.Counter, Done: a.st.Done, Slot: -1,
		Campaign: n.Campaign, Envelope: n.Envelope, Image: n.Image, ChunkSize: n.ChunkSize, Sources: n.Sources,
		Deadline: n.Deadline, Key: n.Key, Retry: n.Retry,
	}
	a.mu.Unlock()
	if err := a.setState(ctx, schemas.StateNotified, schemas.CodeNone, ""); err != nil {
		a.log.Error("persisting notice", "err", err)
	}
}

// authenticate checks a decoded notice's signature against NoticeTrust and
// that it targets this device (or, with ClassTarget, its class). It
// returns the report code and the reason when it does not.
func (a *Agent) authenticate(n *schemas.UpdateNotice) (schemas.ErrCode, error) {
	if _, err := suit.VerifyNotice(n, a.cfg.NoticeTrust); err != nil {
		code, _ := classify(err)
		return code, err
	}
	switch {
	case n.ClassTarget && (a.cfg.Class == "" || n.Target != a.cfg.Class):
		return schemas.CodeDeviceMismatch, fmt.Errorf("signed for class %q, not this device's class %q", n.Target, a.cfg.Class)
	case !n.ClassTarget && n.Target != a.cfg.DeviceID:
		return schemas.CodeDeviceMismatch, fmt.Errorf("signed for device %q, not this device", n.Target)
	}
	return schemas.CodeNone, nil
}

// securityEvent reports a refused message as a security event: a report
// that names no campaign, carries code and the device's unchanged state,
// and is marked Security. Three may go out at once, then one per
// Config.SecurityInterval; the ones in between are counted, and the count
// goes out with the next (or, see flushSecurity, after the interval).
func (a *Agent) securityEvent(ctx context.Context, code schemas.ErrCode, text string) {
	a.log.Warn("security event: message refused", "code", code, "text", text)
	a.mu.Lock()
	if !a.secLimit.AllowN(a.cfg.Clock.Now(), 1) {
		a.secMissed++
		a.secCode, a.secText = code, text
		a.mu.Unlock()
		return
	}
	missed := a.secMissed
	a.secMissed = 0
	a.mu.Unlock()
	if missed > 0 {
		text = fmt.Sprintf("%s (and %d more refused since the last security report)", text, missed)
	}
	a.reportSecurity(ctx, code, text)
}

// flushSecurity sends the count of security events held back by the rate
// limit, once it allows a report.
func (a *Agent) flushSecurity(ctx context.Context) {
	a.mu.Lock()
	if a.secMissed == 0 || !a.secLimit.AllowN(a.cfg.Clock.Now(), 1) {
		a.mu.Unlock()
		return
	}
	missed, code, text := a.secMissed, a.secCode, a.secText
	a.secMissed = 0
	a.mu.Unlock()
	a.reportSecurity(ctx, code, fmt.Sprintf("%d messages refused since the last security report; the last: %s", missed, text))
}

// reportSecurity publishes a security report.
func (a *Agent) reportSecurity(ctx context.Context, code schemas.ErrCode, text string) {
	a.mu.Lock()
	state := a.st.State
	a.mu.Unlock()
	_ = a.sendReport(ctx, "", state, code, text, true, nil)
}
