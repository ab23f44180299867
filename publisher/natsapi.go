package publisher

import (
	"context"
	"errors"
	"fmt"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// apiOps are the campaign operations served on request/reply subjects
// schemas.Topics.API("campaign."+op), CBOR schemas.CampaignCommand in,
// schemas.CampaignReply out.
var apiOps = []string{"create", "start", "pause", "resume", "abort", "status", "list"}

// codeOf maps an error to the code carried in replies.
func codeOf(err error) schemas.ErrCode {
	switch {
	case err == nil:
		return schemas.CodeNone
	case errors.Is(err, ErrUnauthorized), errors.Is(err, ErrForbidden):
		return schemas.CodeUnauthorized
	case errors.Is(err, ErrNotFound):
		return schemas.CodeNotFound
	case errors.Is(err, ErrState), errors.Is(err, ErrExists), errors.Is(err, ErrConflict):
		return schemas.CodeConflict
	case errors.Is(err, ErrNoSigner):
		return schemas.CodeUnsupported
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrTooLarge), errors.Is(err, schemas.ErrMalformed),
		errors.Is(err, schemas.ErrInvalid), errors.Is(err, schemas.ErrVersion), errors.Is(err, schemas.ErrTooLarge):
		return schemas.CodeMalformed
	}
	return schemas.CodeInternal
}

// handleAPI serves one campaign command and replies.
func (p *Publisher) handleAPI(ctx context.Context, m broker.Message) {
	rep := p.command(ctx, m.Topic, m.Payload)
	b, err := schemas.Encode(rep)
	if err != nil {
		b, _ = schemas.Encode(&schemas.CampaignReply{V: schemas.Version, Code: schemas.CodeInternal, Error: "reply too large"})
	}
	status := "ok"
	if !rep.OK {
		status = rep.Code.String()
	}
	p.met.apiRequests.WithLabelValues("nats", status).Inc()
	if err := p.cfg.Transport.Reply(ctx, m, b); err != nil {
		p.log.Warn("api reply", "topic", m.Topic, "err", err)
	}
}

// Command executes one encoded CampaignCommand as received on topic and
// returns the reply. The operation named by the topic must match the
// command's Op.
func (p *Publisher) command(ctx context.Context, topic string, payload []byte) *schemas.CampaignReply {
	fail := func(err error) *schemas.CampaignReply {
		return &schemas.CampaignReply{V: schemas.Version, Code: codeOf(err), Error: err.Error()}
	}
	var cmd schemas.CampaignCommand
	if err := schemas.Decode(payload, &cmd); err != nil {
		return fail(err)
	}
	if t, err := p.cfg.Topics.API("campaign." + cmd.Op); err != nil || (topic != t.NATS && topic != t.MQTT) {
		return fail(fmt.Errorf("%w: op %q sent to %s", ErrInvalid, cmd.Op, topic))
	}
	who, err := p.Authenticate(ctx, cmd.Key)
	if err != nil {
		return fail(err)
	}
	need := ScopeCampaign
	if cmd.Op == "status" || cmd.Op == "list" {
		need = ScopeRead
	}
	if !who.Can(need) {
		return fail(fmt.Errorf("%w: key lacks scope %s", ErrForbidden, need))
	}
	rep := &schemas.CampaignReply{V: schemas.Version, OK: true}
	var c Campaign
	switch cmd.Op {
	case "create":
		c, err = p.CreateCampaign(ctx, who, *cmd.Spec)
	case "start":
		c, err = p.StartCampaign(ctx, who, cmd.Campaign)
	case "pause":
		c, err = p.PauseCampaign(ctx, who, cmd.Campaign)
	case "resume":
		c, err = p.ResumeCampaign(ctx, who, cmd.Campaign)
	case "abort":
		c, err = p.AbortCampaign(ctx, who, cmd.Campaign)
	case "status":
		var s Status
		if s, err = p.CampaignStatus(ctx, cmd.Campaign); err == nil {
			w := s.Wire()
			rep.Status = &w
		}
		c.ID = ""
	case "list":
		var ss []Status
		if ss, err = p.Campaigns(ctx); err == nil {
			for _, s := range ss {
				rep.List = append(rep.List, s.Wire())
			}
		}
	}
	if err != nil {
		return fail(err)
	}
	if c.ID != "" {
		w := p.status(&c).Wire()
		rep.Status = &w
	}
	return rep
}
