package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Attacks by a service identity: a program given broker credentials to
// call the campaign API over NATS (before roles existed, such a program
// needed a backend account, and with it every power of the publisher).
// Each attack runs against a running publisher on the embedded NATS
// server and on a nats-server 2.9.10 process configured from the file
// `firmcast broker nats-config` writes.

const roleSvc, roleSvcSecret = "svc-ci", "svc-ci-secret-0123456789"

// roleRig is a running publisher and the service's raw NATS connection.
type roleRig struct {
	st     *stack.Stack
	topics schemas.Topics
	ns     string
	url    string
	svc    *nats.Conn
	// violations receives the server's permission errors on svc.
	violations chan error
	image      []byte // an uploaded image's digest
	device     string // a registered device
}

func roleAccounts() []broker.Account {
	return []broker.Account{
		{Identity: broker.Identity{Username: backendUser, Role: broker.RoleBackend}, Secret: backendSecret},
		{Identity: broker.Identity{Username: roleSvc, Role: broker.RoleService}, Secret: roleSvcSecret},
	}
}

// roleServers starts a publisher with the service account: on the
// embedded NATS server, or on an external nats-server process.
var roleServers = []struct {
	name  string
	start func(t *testing.T, topics schemas.Topics, pc publisher.Config) *stack.Stack
}{
	{"embedded", func(t *testing.T, topics schemas.Topics, pc publisher.Config) *stack.Stack {
		return stacktest.Start(t, stack.Config{Topics: topics, NoMQTT: true, Accounts: roleAccounts(), Publisher: pc, Logger: quietLogger()})
	}},
	{"nats-server-2.9-config", func(t *testing.T, topics schemas.Topics, pc publisher.Config) *stack.Stack {
		url := testutil.StartNATSProcessWithPolicy(t, topics, roleAccounts()).URL()
		return stacktest.Start(t, stack.Config{Topics: topics, NATSURL: url, NoMQTT: true, Backend: roleAccounts()[0], Publisher: pc, Logger: quietLogger()})
	}},
}

func startRoleRig(t *testing.T, start func(*testing.T, schemas.Topics, publisher.Config) *stack.Stack) *roleRig {
	t.Helper()
	topics := testutil.UniqueTopics(t)
	key, err := suit.GenerateKey("es256", nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	pc := publisher.Config{Signer: publisher.SUITSigner(signer), VendorID: bytes.Repeat([]byte{1}, 16), ClassID: bytes.Repeat([]byte{2}, 16), Logger: quietLogger()}
	st := start(t, topics, pc)
	r := &roleRig{st: st, topics: topics, ns: topics.Root(), url: st.NATSURL, violations: make(chan error, 64), device: "role-dev-1"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	img, _, err := st.Pub.UploadImage(ctx, st.Admin, "v2", bytes.NewReader(bytes.Repeat([]byte("firmware"), 512)))
	if err != nil {
		t.Fatal(err)
	}
	if r.image, err = hex.DecodeString(img.Digest); err != nil {
		t.Fatal(err)
	}
	if err := st.RegisterDevice(ctx, r.device, "cls", "role-device-secret-0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	in, _ := topics.API("inbox." + roleSvc)
	r.svc, err = nats.Connect(r.url, nats.UserInfo(roleSvc, roleSvcSecret), nats.Name(roleSvc), nats.CustomInboxPrefix(in.NATS),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case r.violations <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("service connect: %v", err)
	}
	t.Cleanup(r.svc.Close)
	return r
}

// try sends body on subj from the service's connection, with a reply
// inbox, and returns as soon as the server refuses it (a permission
// violation naming subj: refused) or a reply comes (reply), or after 3s
// with neither.
func (r *roleRig) try(t *testing.T, subj string, body []byte) (refused bool, reply *nats.Msg) {
	t.Helper()
	inbox := r.svc.NewInbox()
	sub, err := r.svc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := r.svc.PublishRequest(subj, inbox, body); err != nil {
		t.Fatal(err)
	}
	got := make(chan *nats.Msg, 1)
	go func() {
		if m, err := sub.NextMsg(3 * time.Second); err == nil {
			got <- m
		}
		close(got)
	}()
	for {
		select {
		case err := <-r.violations:
			if r.violation(err, subj) {
				return true, nil
			}
		case m := <-got:
			return false, m
		}
	}
}

// violation reports whether err is the server's refusal of subj.
func (r *roleRig) violation(err error, subj string) bool {
	return errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subj+`"`)
}

// forEachRoleServer runs attack on a fresh rig per server.
func forEachRoleServer(t *testing.T, attack func(t *testing.T, r *roleRig)) {
	for _, s := range roleServers {
		t.Run(s.name, func(t *testing.T) { attack(t, startRoleRig(t, s.start)) })
	}
}

// TestServiceCannotWriteAPIKey: a service writes its own admin API key
// straight into the key bucket (a KV put, which would leave no audit
// entry). Refused; the token does not authenticate.
func TestServiceCannotWriteAPIKey(t *testing.T) {
	forEachRoleServer(t, func(t *testing.T, r *roleRig) {
		const tok = "fck_f0f0f0f0f0f0_forged-admin-token-by-a-service"
		sum := sha256.Sum256([]byte(tok))
		// A stored key record: the publisher still reads keys stored
		// with an unsalted SHA-256.
		k, _ := json.Marshal(map[string]any{"id": "f0f0f0f0f0f0", "name": "forged", "scopes": []string{"admin"},
			"hash": hex.EncodeToString(sum[:]), "created": time.Now().UTC()})
		subj := "$KV." + r.ns + "_apikeys.f0f0f0f0f0f0"
		if refused, ack := r.try(t, subj, k); !refused {
			t.Errorf("the server did not refuse the service's put into the key bucket (ack %q)", replyData(ack))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if who, err := r.st.Pub.Authenticate(ctx, tok); !errors.Is(err, publisher.ErrUnauthorized) {
			t.Fatalf("the forged key authenticates: %+v, %v", who, err)
		}
	})
}

// TestServiceCannotForgeAuditEntry: a service appends a forged entry to
// the audit log by publishing on the audit stream's subject. Refused; the
// log does not contain it.
func TestServiceCannotForgeAuditEntry(t *testing.T) {
	forEachRoleServer(t, func(t *testing.T, r *roleRig) {
		subj := strings.ReplaceAll(r.topics.Root(), "/", ".") + ".audit." + r.ns
		e, _ := json.Marshal(publisher.AuditEntry{Time: time.Now().UTC(), Actor: "forged-by-service", Action: "apikey.revoke", Target: "bootstrap"})
		if refused, ack := r.try(t, subj, e); !refused {
			t.Errorf("the server did not refuse the service's publish on the audit subject (ack %q)", replyData(ack))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		entries, err := r.st.Pub.Audit(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Actor == "forged-by-service" {
				t.Fatalf("the audit log holds the forged entry %+v", e)
			}
		}
	})
}

// TestServiceCannotRewriteAuditStream: a service purges the audit
// stream, deletes an entry, turns DenyDelete/DenyPurge off, and deletes
// the stream. All refused; the log keeps every entry.
func TestServiceCannotRewriteAuditStream(t *testing.T) {
	forEachRoleServer(t, func(t *testing.T, r *roleRig) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		before, err := r.st.Pub.Audit(ctx, 1000)
		if err != nil || len(before) == 0 {
			t.Fatalf("audit log before: %d entries, %v", len(before), err)
		}
		stream := r.ns + "_audit"
		update, _ := json.Marshal(jetstream.StreamConfig{Name: stream, Subjects: []string{strings.ReplaceAll(r.topics.Root(), "/", ".") + ".audit." + r.ns}, Storage: jetstream.FileStorage})
		for _, a := range []struct{ name, subj string }{
			{"purge", "$JS.API.STREAM.PURGE." + stream},
			{"delete an entry", "$JS.API.STREAM.MSG.DELETE." + stream},
			{"update without DenyDelete/DenyPurge", "$JS.API.STREAM.UPDATE." + stream},
			{"delete the stream", "$JS.API.STREAM.DELETE." + stream},
		} {
			var body []byte // purge and stream delete take an empty request
			switch {
			case strings.Contains(a.subj, "UPDATE"):
				body = update
			case strings.Contains(a.subj, "MSG.DELETE"):
				body = []byte(`{"seq":1}`)
			}
			if refused, reply := r.try(t, a.subj, body); !refused {
				t.Errorf("%s: not refused by the server (reply %q)", a.name, replyData(reply))
			}
		}
		after, err := r.st.Pub.Audit(ctx, 1000)
		if err != nil {
			t.Fatalf("audit log after the attack: %v", err)
		}
		if len(after) < len(before) || after[0].Seq != before[0].Seq {
			t.Fatalf("audit log rewritten: %d entries from seq %d, was %d from seq %d", len(after), after[0].Seq, len(before), before[0].Seq)
		}
	})
}

func replyData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}

// TestServiceCampaignAPIByKeyScope: a service calls the campaign API over
// NATS. Without a key, or with a read-only key, creating a campaign is
// refused (as over HTTP); so are going around the API (writing a
// campaign into the campaign bucket) and listening on the API subject to
// steal other callers' keys or answer in the publisher's place. With a
// campaign key the service creates a campaign: the role is enough for
// the API.
func TestServiceCampaignAPIByKeyScope(t *testing.T) {
	forEachRoleServer(t, func(t *testing.T, r *roleRig) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		readKey, _, err := r.st.Pub.CreateAPIKey(ctx, r.st.Admin, "svc-read", []publisher.Scope{publisher.ScopeRead})
		if err != nil {
			t.Fatal(err)
		}
		campaignKey, _, err := r.st.Pub.CreateAPIKey(ctx, r.st.Admin, "svc-campaign", []publisher.Scope{publisher.ScopeCampaign})
		if err != nil {
			t.Fatal(err)
		}
		create, _ := r.topics.API("campaign.create")

		// Listening on the API subject: refused, and nothing arrives.
		spy, err := r.svc.SubscribeSync(create.NATS)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.svc.Flush(); err != nil {
			t.Fatal(err)
		}
		// The refusal of a subscription comes asynchronously; the
		// requests below must not reach the spy either way.
		select {
		case err := <-r.violations:
			if !r.violation(err, create.NATS) {
				t.Errorf("unexpected error: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("the server did not refuse the service's subscription to the campaign API subject")
		}

		// The service's own connection, as a service dials (client id =
		// its user name, so its inbox is its own).
		tr := testutil.Dial(t, broker.Config{URL: r.url, Topics: r.topics, ClientID: roleSvc, Username: roleSvc, Password: roleSvcSecret, Logger: quietLogger()})
		call := func(key string) *schemas.CampaignReply {
			t.Helper()
			b, err := schemas.Encode(&schemas.CampaignCommand{V: schemas.Version, Op: "create", Key: key,
				Spec: &schemas.CampaignSpec{Image: r.image, Devices: []string{r.device}}})
			if err != nil {
				t.Fatal(err)
			}
			rb, err := tr.(broker.Requester).Request(ctx, create, b)
			if err != nil {
				t.Fatalf("campaign.create: %v", err)
			}
			var rep schemas.CampaignReply
			if err := schemas.Decode(rb, &rep); err != nil {
				t.Fatal(err)
			}
			return &rep
		}
		for _, c := range []struct{ name, key string }{{"no key", ""}, {"read-only key", readKey}} {
			if rep := call(c.key); rep.OK || rep.Code != schemas.CodeUnauthorized {
				t.Errorf("create with %s: %+v, want CodeUnauthorized", c.name, rep)
			}
		}
		rep := call(campaignKey)
		if !rep.OK || rep.Status == nil {
			t.Fatalf("create with a campaign key: %+v", rep)
		}
		// Every request has been answered, so whatever the spy was
		// going to receive has been routed to it by now.
		for {
			m, err := spy.NextMsg(200 * time.Millisecond)
			if err != nil {
				break
			}
			var cmd schemas.CampaignCommand
			_ = schemas.Decode(m.Data, &cmd)
			t.Errorf("the service's spy subscription received another caller's request, with key %q", cmd.Key)
		}

		// Going around the API: a campaign written straight into the
		// campaign bucket.
		c, _ := json.Marshal(map[string]any{"id": "c-forged", "name": "forged", "state": "running", "targets": []string{r.device}})
		subj := "$KV." + r.ns + "_campaigns.c-forged"
		if refused, ack := r.try(t, subj, c); !refused {
			t.Errorf("the server did not refuse the service's put into the campaign bucket (ack %q)", replyData(ack))
		}
		if _, err := r.st.Pub.CampaignStatus(ctx, "c-forged"); !errors.Is(err, publisher.ErrNotFound) {
			t.Errorf("forged campaign: %v, want ErrNotFound", err)
		}
	})
}
