package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// AuditEntry is one line of the append-only audit log: who did what, when.
type AuditEntry struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	KeyID  string    `json:"key_id,omitempty"`
	Action string    `json:"action"`
	Target string    `json:"target,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// audit appends an entry. A failure to audit is logged and counted, not
// returned: the operation it records has already taken effect. The
// append carries a Nats-Msg-Id unique to the entry, so that when it times
// out and is sent again (withRetry) the server drops the copy of one that
// did arrive: an entry is recorded once.
func (p *Publisher) audit(ctx context.Context, who Principal, action, target, detail string) {
	_ = p.appendAudit(ctx, who, action, target, detail)
}

// appendAudit appends an entry and waits for the stream's
// acknowledgement; a failure is logged, counted and returned (key changes
// are refused without their entry: apikeys.go).
func (p *Publisher) appendAudit(ctx context.Context, who Principal, action, target, detail string) error {
	e := AuditEntry{Time: p.cfg.Clock.Now().UTC(), Actor: who.Name, KeyID: who.KeyID, Action: action, Target: target, Detail: detail}
	b, _ := json.Marshal(e)
	id := randomID("audit")
	err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		_, err := p.cfg.JetStream.Publish(ctx, p.st.auditSubj, b, jetstream.WithMsgID(id))
		return err
	})
	if err != nil {
		p.met.auditErrors.Inc()
		p.log.Error("audit log append failed", "action", action, "target", target, "err", err)
		return fmt.Errorf("publisher: audit log append (%s %s): %w", action, target, err)
	}
	return nil
}

// Audit returns up to limit of the most recent audit entries, oldest first.
func (p *Publisher) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	if limit <= 0 || limit > 10000 {
		limit = 100
	}
	info, err := p.st.audit.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("publisher: audit log: %w", err)
	}
	last, first := info.State.LastSeq, info.State.FirstSeq
	start := first
	if last >= uint64(limit) && last-uint64(limit)+1 > start {
		start = last - uint64(limit) + 1
	}
	var out []AuditEntry
	for seq := start; seq <= last && seq != 0; seq++ {
		m, err := p.st.audit.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("publisher: audit log entry %d: %w", seq, err)
		}
		var e AuditEntry
		if err := json.Unmarshal(m.Data, &e); err != nil {
			continue
		}
		e.Seq = seq
		out = append(out, e)
	}
	return out, nil
}
