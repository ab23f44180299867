package deviceagent

import (
	"bytes"
	"context"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

// onNotice handles one message from a notice or announcement topic.
func (a *Agent) onNotice(ctx context.Context, b []byte) {
	if len(b) == 0 {
		return // a cleared retained notice
	}
	var n schemas.UpdateNotice
	if err := schemas.Decode(b, &n); err != nil {
		a.reject(ctx, "", schemas.CodeMalformed, fmt.Sprintf("notice refused: %v", err))
		return
	}
	if n.Target != a.cfg.DeviceID && (a.cfg.Class == "" || n.Target != a.cfg.Class) {
		a.reject(ctx, n.Campaign, schemas.CodeDeviceMismatch, fmt.Sprintf("notice for %q, not this device or its class", n.Target))
		return
	}
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
		a.reject(ctx, n.Campaign, schemas.CodeConflict, fmt.Sprintf("busy with campaign %s", cur))
		return
	}
	a.mu.Lock()
	a.st = Record{
		V: 1, Counter: a.st.Counter, Done: a.st.Done, Slot: -1,
		Campaign: n.Campaign, Envelope: n.Envelope, Image: n.Image, ChunkSize: n.ChunkSize, Sources: n.Sources,
	}
	a.mu.Unlock()
	if err := a.setState(ctx, schemas.StateNotified, schemas.CodeNone, ""); err != nil {
		a.log.Error("persisting notice", "err", err)
	}
}

// reject reports a refused message without touching the update in
// progress: the report carries the current state and the reason.
func (a *Agent) reject(ctx context.Context, campaign string, code schemas.ErrCode, text string) {
	a.log.Warn("rejected", "campaign", campaign, "code", code, "text", text)
	a.mu.Lock()
	state := a.st.State
	a.mu.Unlock()
	if schemas.CheckID("campaign", campaign) != nil {
		campaign = ""
	}
	_ = a.reportFor(ctx, campaign, state, code, text)
}
