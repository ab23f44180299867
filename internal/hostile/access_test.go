package hostile

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
)

// The access-control matrix: who may publish and subscribe where, for
// the backend, device A, device B, a service S (a campaign API caller), an
// anonymous client and a client with a wrong secret, on every broker
// firmcast supports: the embedded MQTT v5 (mochi) and NATS servers, each
// also behind a TLS listener with a CA generated here, a mosquitto
// process configured from the files `firmcast broker mosquitto-config`
// writes (broker.MosquittoConfig), and a nats-server 2.9.10 process
// configured from the file `firmcast broker nats-config` writes
// (broker.NATSConfig). A service may not connect to MQTT at all; on NATS
// it may publish campaign API requests and read its own inbox, nothing
// else (no JetStream: it can neither write an API key into the key bucket
// nor append to, purge or delete the audit stream).
//
// broker/acl_test.go (TestACL) checks the device-side denials in depth;
// this test states the whole matrix, allowed cells included, so a policy
// that let too little through fails as well as one that let too much.
//
// On the MQTT brokers two more kinds of rows are checked, with raw paho
// clients on a fresh broker (checkIdentity): wills (a will on each topic
// of the matrix, from the backend and from a device: delivered only
// where that identity may publish, and never from a device on the
// embedded broker, which refuses a device's CONNECT with a will) and
// client ids (no identity may drop another by asking for its client id;
// broker/identity_test.go has the same attacks one by one). NATS has no
// wills, and a NATS client name is no identity.

const (
	accDevA, accDevB, accClass = "dev-a", "dev-b", "cls-a"
	accSvc, accSvcSecret       = "svc-s", "secret-s-0123456789"
	accImage                   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	// accNS is the namespace of the key bucket and audit stream the
	// JetStream rows probe (made by the backend as the publisher makes
	// them).
	accNS = "accns"
	// accBackend2 is a second backend identity; accImpostor a device
	// whose id is the client id `firmcast serve` asks for.
	accBackend2, accBackend2Secret = "backend-2", "secret-backend-2-0123456789"
	accImpostor, accImpostorSecret = "publisher", "secret-publisher-0123456789"
)

func accAccounts() []broker.Account {
	return []broker.Account{
		{Identity: broker.Identity{Username: backendUser, Role: broker.RoleBackend}, Secret: backendSecret},
		{Identity: broker.Identity{Username: accDevA, Role: broker.RoleDevice, Device: accDevA, Class: accClass}, Secret: "secret-a-0123456789"},
		{Identity: broker.Identity{Username: accDevB, Role: broker.RoleDevice, Device: accDevB, Class: accClass}, Secret: "secret-b-0123456789"},
		{Identity: broker.Identity{Username: accSvc, Role: broker.RoleService}, Secret: accSvcSecret},
		{Identity: broker.Identity{Username: accBackend2, Role: broker.RoleBackend}, Secret: accBackend2Secret},
		{Identity: broker.Identity{Username: accImpostor, Role: broker.RoleDevice}, Secret: accImpostorSecret},
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "firmcast test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "firmcast broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, srvKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

type accBroker struct {
	name      string
	start     func(t *testing.T, topics schemas.Topics, srvTLS *tls.Config) string
	tls       bool
	refusesOn bool // denied subscribes and QoS 1 publishes get an error (mosquitto 2.0.11 drops them silently)
	nats      bool // a NATS server: the service principal and the JetStream rows apply
	// mqtt: the wills and client-id rows apply. refusesWills: a device's
	// CONNECT with a will is refused (mochi); otherwise the broker checks
	// the will against the ACL when it sends it (mosquitto).
	mqtt, refusesWills bool
}

func accBrokers() []accBroker {
	mochi := func(t *testing.T, topics schemas.Topics, srvTLS *tls.Config) string {
		return testutil.StartMochi(t, broker.MQTTServerConfig{Auth: testutil.CredentialStore(t, accAccounts()), Topics: topics, TLS: srvTLS}).URL()
	}
	nats := func(t *testing.T, topics schemas.Topics, srvTLS *tls.Config) string {
		srv := testutil.StartNATS(t, broker.NATSServerConfig{Auth: testutil.CredentialStore(t, accAccounts()), Topics: topics, TLS: srvTLS})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.EnsureNoticeStream(ctx); err != nil {
			t.Fatal(err)
		}
		return srv.URL()
	}
	return []accBroker{
		{"mochi", mochi, false, true, false, true, true},
		{"mochi-mqtts", mochi, true, true, false, true, true},
		{"nats", nats, false, true, true, false, false},
		{"nats-tls", nats, true, true, true, false, false},
		{"mosquitto-config", func(t *testing.T, topics schemas.Topics, _ *tls.Config) string {
			return testutil.StartMosquittoWithPolicy(t, topics, accAccounts()).URL()
		}, false, false, false, true, false},
		{"nats-server-2.9-config", func(t *testing.T, topics schemas.Topics, _ *tls.Config) string {
			url := testutil.StartNATSProcessWithPolicy(t, topics, accAccounts()).URL()
			// Devices cannot create the notice stream; the backend does.
			tr := testutil.Dial(t, broker.Config{URL: url, Topics: topics, ClientID: backendUser, Username: backendUser, Password: backendSecret, Logger: quietLogger()})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := tr.(*broker.NATSTransport).NoticeStream(ctx); err != nil {
				t.Fatal(err)
			}
			return url
		}, false, true, true, false, false},
	}
}

// cell is one topic of the matrix, with who may publish to it and who may
// subscribe to it.
type cell struct {
	name         string
	topic        schemas.Topic
	family       broker.Family
	pubBy, subBy string // principals allowed, "," separated; the backend always is
}

// matrix is the topic cells; on NATS (nats) the service S may publish
// campaign API requests, and each principal has an inbox only it reads.
func matrix(topics schemas.Topics, nats bool) []cell {
	must := func(tp schemas.Topic, err error) schemas.Topic {
		if err != nil {
			panic(err)
		}
		return tp
	}
	api := ""
	if nats {
		api = "S"
	}
	cells := []cell{
		{"notice A", must(topics.Notice(accDevA)), broker.FamilyNotice, "", "A"},
		{"notice B", must(topics.Notice(accDevB)), broker.FamilyNotice, "", "B"},
		{"announce class", must(topics.Announce(accClass)), broker.FamilyNotice, "", "A,B"},
		{"chunk broadcast", must(topics.Chunks(accImage)), broker.FamilyChunk, "", "A,B"},
		// A device's chunk requests and its loss summaries after a wave
		// (chunk requests too, of either delivery protocol) go on its own
		// request topic, the only one it may publish them on: no device
		// can send a summary as another. publisher's
		// TestForgedLossSummaries has what the publisher does with the
		// summaries a device can send.
		{"chunk requests and loss summaries A", must(topics.ChunkRequestsFrom(accDevA)), broker.FamilyChunkRequest, "A", ""},
		{"chunk requests and loss summaries B", must(topics.ChunkRequestsFrom(accDevB)), broker.FamilyChunkRequest, "B", ""},
		{"chunk reply A", must(topics.ChunkReply(accDevA)), broker.FamilyChunk, "", "A"},
		{"chunk reply B", must(topics.ChunkReply(accDevB)), broker.FamilyChunk, "", "B"},
		{"report A", must(topics.Report(accDevA)), broker.FamilyReport, "A", ""},
		{"report B", must(topics.Report(accDevB)), broker.FamilyReport, "B", ""},
		{"campaign API", must(topics.API("campaign.create")), broker.FamilyControl, api, ""},
	}
	if nats {
		cells = append(cells,
			cell{"inbox S", must(topics.API("inbox." + accSvc + ".cell")), broker.FamilyControl, "", "S"},
			cell{"inbox A", must(topics.API("inbox." + accDevA + ".cell")), broker.FamilyControl, "", "A"},
		)
	}
	return cells
}

// TestAccessMatrix runs the matrix on every broker; it logs the count of
// cells checked.
func TestAccessMatrix(t *testing.T) {
	srvTLS, cliTLS := testCA(t)
	total := 0
	for _, b := range accBrokers() {
		t.Run(b.name, func(t *testing.T) {
			topics := testutil.UniqueTopics(t)
			var st, ct *tls.Config
			if b.tls {
				st, ct = srvTLS, cliTLS
			}
			url := b.start(t, topics, st)
			dial := func(user, secret string) (broker.Transport, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return broker.Dial(ctx, broker.Config{URL: url, Topics: topics, ClientID: user, Username: user, Password: secret, TLS: ct, Logger: quietLogger()})
			}
			// Who may connect at all.
			refused := []struct{ name, user, secret string }{
				{"anonymous", "", ""},
				{"wrong secret", accDevA, "not-the-secret-0123"},
				{"unknown user", "mallory", "secret-a-0123456789"},
				{"device secret for the backend", backendUser, "secret-a-0123456789"},
				{"service secret for the backend", backendUser, accSvcSecret},
			}
			if !b.nats {
				refused = append(refused, struct{ name, user, secret string }{"service on MQTT", accSvc, accSvcSecret})
			}
			for _, c := range refused {
				tr, err := dial(c.user, c.secret)
				total++
				if err == nil {
					tr.Close(context.Background())
					t.Errorf("%s: connected", c.name)
				} else if !errors.Is(err, broker.ErrNotAuthorized) {
					t.Errorf("%s: %v, want ErrNotAuthorized", c.name, err)
				}
			}
			if b.tls {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				tr, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics, ClientID: accDevA, Username: accDevA,
					Password: "secret-a-0123456789", TLS: &tls.Config{MinVersion: tls.VersionTLS12}})
				cancel()
				total++
				if err == nil {
					tr.Close(context.Background())
					t.Error("a client that does not trust the test CA connected")
				}
			}
			principals := map[string]broker.Transport{}
			who := []struct{ name, user, secret string }{
				{"backend", backendUser, backendSecret}, {"A", accDevA, "secret-a-0123456789"}, {"B", accDevB, "secret-b-0123456789"},
			}
			if b.nats {
				who = append(who, struct{ name, user, secret string }{"S", accSvc, accSvcSecret})
			}
			for _, p := range who {
				tr, err := dial(p.user, p.secret)
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				t.Cleanup(func() { tr.Close(context.Background()) })
				principals[p.name] = tr
			}
			total += checkMatrix(t, b, topics, principals)
			if b.nats {
				total += checkJetStreamMatrix(t, topics, dial) // JetStream API rows, below
			}
			if b.mqtt {
				total += checkIdentity(t, b, st, ct)
			}
		})
	}
	t.Logf("access matrix: %d cells checked over %d brokers", total, len(accBrokers()))
}

func allowed(list, who string) bool {
	return who == "backend" || (list != "" && strings.Contains(","+list+",", ","+who+","))
}

// recorder keeps every payload a subscription delivered.
type recorder struct {
	mu      sync.Mutex
	got     map[string]bool
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{got: map[string]bool{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) handler(_ context.Context, m broker.Message) {
	r.mu.Lock()
	r.got[string(m.Payload)] = true
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) has(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[p]
}

// wait reports whether p arrives within d.
func (r *recorder) wait(p string, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for !r.has(p) {
		select {
		case <-r.changed:
		case <-deadline.C:
			return false
		}
	}
	return true
}

// checkMatrix checks every publish and subscribe cell for the backend,
// both devices and (on NATS) the service, and returns how many it
// checked. An allowed cell must
// deliver its message; a denied one must not, checked after a sentinel
// sent on an allowed topic has arrived, and again at the end.
func checkMatrix(t *testing.T, b accBroker, topics schemas.Topics, ps map[string]broker.Transport) int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := 0
	var denied []struct {
		rec     *recorder
		payload string
	}
	// Publishes: the backend watches the whole root.
	watch := newRecorder()
	all := schemas.Topic{MQTT: topics.Root() + "/#", NATS: strings.ReplaceAll(topics.Root(), "/", ".") + ".>"}
	if _, err := ps["backend"].Subscribe(ctx, all, watch.handler, broker.SubscribeOptions{Family: broker.FamilyReport}); err != nil {
		t.Fatal(err)
	}
	own := map[string]schemas.Topic{}
	own["A"], _ = topics.Report(accDevA)
	own["B"], _ = topics.Report(accDevB)
	own["backend"], _ = topics.Report("probe")
	own["S"], _ = topics.API("campaign.list") // a service's one allowed publish
	principals := []string{"backend", "A", "B"}
	if b.nats {
		principals = append(principals, "S")
	}
	for _, who := range principals {
		for _, c := range matrix(topics, b.nats) {
			n++
			payload := fmt.Sprintf("pub %s -> %s", who, c.name)
			err := ps[who].Publish(ctx, c.topic, []byte(payload), broker.PublishOptions{Family: c.family})
			ok := allowed(c.pubBy, who)
			if err != nil && (ok || !errors.Is(err, broker.ErrNotAuthorized)) {
				t.Errorf("%s publishing to %s: %v", who, c.name, err)
				continue
			}
			if ok {
				if !watch.wait(payload, 5*time.Second) {
					t.Errorf("%s publishing to %s: not delivered, want delivered", who, c.name)
				}
				continue
			}
			sentinel := "sentinel " + payload
			if err := ps[who].Publish(ctx, own[who], []byte(sentinel), broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
				t.Fatal(err)
			}
			if !watch.wait(sentinel, 5*time.Second) {
				t.Fatalf("%s: sentinel on its own report topic not delivered", who)
			}
			if watch.has(payload) {
				t.Errorf("%s publishing to %s: delivered, want refused", who, c.name)
			}
			denied = append(denied, struct {
				rec     *recorder
				payload string
			}{watch, payload})
		}
	}
	// Subscribes: each principal subscribes to every cell, and the backend
	// publishes to it; the principal's own notice topic carries the sentinel.
	for _, who := range principals {
		control, _ := topics.Notice(map[string]string{"A": accDevA, "B": accDevB, "backend": "probe"}[who])
		if who == "S" {
			control, _ = topics.API("inbox." + accSvc + ".control") // the service reads only its inbox
		}
		ctl := newRecorder()
		if _, err := ps[who].Subscribe(ctx, control, ctl.handler, broker.SubscribeOptions{Family: broker.FamilyNotice}); err != nil {
			t.Fatalf("%s subscribing to its own notice: %v", who, err)
		}
		for _, c := range append(matrix(topics, b.nats), cell{name: "all notices (wildcard)", topic: topics.NoticesAll(), family: broker.FamilyNotice}) {
			n++
			ok := allowed(c.subBy, who)
			if c.topic == control {
				// MQTT keeps one subscription per filter: reuse the
				// control subscription rather than replace it.
				payload := fmt.Sprintf("sub %s <- %s", who, c.name)
				if err := ps["backend"].Publish(ctx, c.topic, []byte(payload), broker.PublishOptions{Family: c.family}); err != nil {
					t.Fatal(err)
				}
				if !ok || !ctl.wait(payload, 5*time.Second) {
					t.Errorf("%s subscribed to its own %s: not delivered", who, c.name)
				}
				continue
			}
			rec := newRecorder()
			sub, err := ps[who].Subscribe(ctx, c.topic, rec.handler, broker.SubscribeOptions{Family: c.family})
			if err != nil {
				if ok || !errors.Is(err, broker.ErrNotAuthorized) {
					t.Errorf("%s subscribing to %s: %v", who, c.name, err)
				}
				continue
			}
			if !ok && b.refusesOn {
				t.Errorf("%s subscribing to %s was acknowledged; this broker refuses denied subscriptions", who, c.name)
			}
			target := c.topic
			if strings.ContainsAny(target.MQTT, "+#") {
				target, _ = topics.Notice(map[string]string{"A": accDevB, "B": accDevA, "backend": accDevA, "S": accDevA}[who])
			}
			payload := fmt.Sprintf("sub %s <- %s", who, c.name)
			if err := ps["backend"].Publish(ctx, target, []byte(payload), broker.PublishOptions{Family: c.family}); err != nil {
				t.Fatal(err)
			}
			if ok {
				if !rec.wait(payload, 5*time.Second) {
					t.Errorf("%s subscribed to %s: not delivered, want delivered", who, c.name)
				}
				_ = sub.Unsubscribe(ctx)
				continue
			}
			sentinel := "sentinel " + payload
			if err := ps["backend"].Publish(ctx, control, []byte(sentinel), broker.PublishOptions{Family: broker.FamilyNotice}); err != nil {
				t.Fatal(err)
			}
			if !ctl.wait(sentinel, 5*time.Second) {
				t.Fatalf("%s: sentinel on its own notice topic not delivered", who)
			}
			if rec.has(payload) {
				t.Errorf("%s subscribed to %s: delivered, want refused", who, c.name)
			}
			denied = append(denied, struct {
				rec     *recorder
				payload string
			}{rec, payload})
		}
	}
	// A last round trip, then nothing denied may have arrived late.
	end := "sentinel end"
	if err := ps["A"].Publish(ctx, own["A"], []byte(end), broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
		t.Fatal(err)
	}
	watch.wait(end, 5*time.Second)
	for _, d := range denied {
		if d.rec.has(d.payload) {
			t.Errorf("refused message %q arrived late", d.payload)
		}
	}
	return n
}

// ---- JetStream API rows (NATS): what each principal may ask JetStream.
//
// The topic cells above are publishes and subscriptions under the root;
// these rows are JetStream API requests, which a device must not use to
// list the fleet (STREAM.INFO with a subject filter), follow other
// devices (consumers on the notice stream) or read another device's
// notice (direct get, either form; message get). A device may make one
// request only: the direct get named by its own notice subject. A
// service may make none: it must not write an API key into the key
// bucket, append a forged entry to the audit stream, or purge or delete
// it (the publisher's own identity, the backend, owns that state).

// jsCell is one JetStream API request: who besides the backend may send
// it. An allowed request must be answered (with want in the reply, when
// set); a denied one refused by the server's permissions.
type jsCell struct {
	name, subject string
	body          []byte
	by            string // principals allowed besides the backend, "," separated
	want          string
}

func jetStreamCells(topics schemas.Topics) []jsCell {
	stream := broker.NoticeStreamName(topics)
	na, _ := topics.Notice(accDevA)
	nb, _ := topics.Notice(accDevB)
	nobody, _ := topics.Notice("nobody")
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		return b
	}
	consumer := js(map[string]any{"stream_name": stream, "config": map[string]any{
		"name": "acc-probe", "filter_subject": na.NATS, "deliver_policy": "last_per_subject", "ack_policy": "none", "inactive_threshold": int64(time.Second),
	}})
	return []jsCell{
		{"STREAM.INFO with a subject filter", "$JS.API.STREAM.INFO." + stream, js(map[string]string{"subjects_filter": topics.NoticesAll().NATS}), "", ""},
		{"STREAM.NAMES", "$JS.API.STREAM.NAMES", nil, "", ""},
		{"account INFO", "$JS.API.INFO", nil, "", ""},
		{"CONSUMER.CREATE on notice A", "$JS.API.CONSUMER.CREATE." + stream + ".acc-probe." + na.NATS, consumer, "", ""},
		{"CONSUMER.LIST of the notice stream", "$JS.API.CONSUMER.LIST." + stream, nil, "", ""},
		{"DIRECT.GET notice A (subject in the API subject)", "$JS.API.DIRECT.GET." + stream + "." + na.NATS, nil, "A", "jsm notice A"},
		{"DIRECT.GET notice B (subject in the API subject)", "$JS.API.DIRECT.GET." + stream + "." + nb.NATS, nil, "B", "jsm notice B"},
		{"DIRECT.GET notice A (subject in the body)", "$JS.API.DIRECT.GET." + stream, js(map[string]string{"last_by_subj": na.NATS}), "", ""},
		{"STREAM.MSG.GET notice A", "$JS.API.STREAM.MSG.GET." + stream, js(map[string]string{"last_by_subj": na.NATS}), "", ""},
		{"STREAM.PURGE of a notice subject", "$JS.API.STREAM.PURGE." + stream, js(map[string]string{"filter": nobody.NATS}), "", ""},
		{"STREAM.CREATE", "$JS.API.STREAM.CREATE.ACC_PROBE", []byte("{}"), "", ""},
		{"STREAM.DELETE", "$JS.API.STREAM.DELETE.ACC_PROBE", nil, "", ""},
		// The publisher's state: an admin key written into the key bucket,
		// a forged audit entry, the audit stream purged, an entry deleted,
		// the stream deleted (last: the backend's request does delete it).
		{"KV put of an admin API key", "$KV." + accNS + "_apikeys.forged", js(map[string]any{"id": "forged", "scopes": []string{"admin"}}), "", ""},
		{"audit entry", accAuditSubject(topics), js(map[string]string{"action": "apikey.create", "actor": "forged"}), "", ""},
		{"STREAM.PURGE of the audit stream", "$JS.API.STREAM.PURGE." + accNS + "_audit", nil, "", ""},
		{"STREAM.MSG.DELETE of an audit entry", "$JS.API.STREAM.MSG.DELETE." + accNS + "_audit", js(map[string]int{"seq": 1}), "", ""},
		{"STREAM.DELETE of the audit stream", "$JS.API.STREAM.DELETE." + accNS + "_audit", nil, "", ""},
	}
}

// accAuditSubject is the audit stream's subject for accNS, where the
// publisher puts it (under the topic root: root.audit.<namespace>).
func accAuditSubject(topics schemas.Topics) string {
	return strings.ReplaceAll(topics.Root(), "/", ".") + ".audit." + accNS
}

// checkJetStreamMatrix sends every jsCell request as the backend, device A,
// device B and the service, each from a connection of its own (a refusal
// is reported per connection), and returns how many it checked.
func checkJetStreamMatrix(t *testing.T, topics schemas.Topics, dial func(user, secret string) (broker.Transport, error)) int {
	t.Helper()
	secrets := map[string]string{}
	for _, a := range accAccounts() {
		secrets[a.Username] = a.Secret
	}
	users := map[string]string{"backend": backendUser, "A": accDevA, "B": accDevB, "S": accSvc}
	conn := func(who string) (*nats.Conn, func()) {
		tr, err := dial(users[who], secrets[users[who]])
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		return tr.(*broker.NATSTransport).JetStream().Conn(), func() { tr.Close(context.Background()) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	backend, err := dial(backendUser, backendSecret)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close(ctx)
	for dev, payload := range map[string]string{accDevA: "jsm notice A", accDevB: "jsm notice B"} {
		n, _ := topics.Notice(dev)
		if err := backend.Publish(ctx, n, []byte(payload), broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	// The key bucket and the audit stream, as the publisher makes them.
	bjs := backend.(*broker.NATSTransport).JetStream()
	if _, err := bjs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: accNS + "_apikeys"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bjs.CreateStream(ctx, jetstream.StreamConfig{Name: accNS + "_audit", Subjects: []string{accAuditSubject(topics)}, DenyDelete: true, DenyPurge: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := bjs.Publish(ctx, accAuditSubject(topics), []byte(`{"action":"genuine"}`)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range jetStreamCells(topics) {
		for _, who := range []string{"backend", "A", "B", "S"} {
			n++
			nc, done := conn(who)
			refused, reply := testutil.NATSRequest(t, nc, c.subject, c.body)
			done()
			switch ok := allowed(c.by, who); {
			case ok && refused:
				t.Errorf("%s: %s refused, want answered", who, c.name)
			case ok && reply == nil:
				t.Errorf("%s: %s not answered", who, c.name)
			case ok && c.want != "" && string(reply.Data) != c.want:
				t.Errorf("%s: %s answered %q, want %q", who, c.name, reply.Data, c.want)
			case !ok && !refused:
				t.Errorf("%s: %s not refused (reply %v)", who, c.name, reply != nil)
			}
		}
	}
	return n
}

// checkIdentity checks the wills and client-id rows on a fresh broker of
// kind b, with raw paho clients, and returns how many it checked.
//
// Wills: the backend (as accBackend2) and device A each connect with a
// will on every topic of the matrix (retained on notice topics) and drop
// the connection. A will is delivered only where its identity may
// publish; a device's is refused at CONNECT on the embedded broker. A
// last backend will on an allowed topic is the sentinel after which no
// denied will may arrive.
//
// Client ids: a victim connects, an attacker connects asking for the
// victim's client id, and the victim must still be connected (MQTT
// brokers drop the older of two connections with one client id).
func checkIdentity(t *testing.T, b accBroker, srvTLS, cliTLS *tls.Config) int {
	topics := testutil.UniqueTopics(t)
	url := b.start(t, topics, srvTLS)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := 0
	connect := func(user, secret, clientID string, will *paho.WillMessage) (*testutil.RawMQTT, error) {
		return testutil.ConnectRawMQTT(t, url, cliTLS, &paho.Connect{ClientID: clientID, Username: user, Password: []byte(secret), WillMessage: will})
	}
	secrets := map[string]string{backendUser: backendSecret, accBackend2: accBackend2Secret, accDevA: "secret-a-0123456789",
		accDevB: "secret-b-0123456789", accImpostor: accImpostorSecret}

	// Wills, watched by the backend over the whole root.
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	watcher, err := broker.Dial(dctx, broker.Config{URL: url, Topics: topics, ClientID: backendUser, Username: backendUser,
		Password: backendSecret, TLS: cliTLS, Logger: quietLogger()})
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	watch := newRecorder()
	all := schemas.Topic{MQTT: topics.Root() + "/#"}
	if _, err := watcher.Subscribe(ctx, all, watch.handler, broker.SubscribeOptions{Family: broker.FamilyReport}); err != nil {
		t.Fatal(err)
	}
	var denied []string
	for _, who := range []struct{ name, user string }{{"backend", accBackend2}, {"A", accDevA}} {
		for _, c := range matrix(topics, false) {
			n++
			payload := fmt.Sprintf("will %s -> %s", who.name, c.name)
			will := &paho.WillMessage{Topic: c.topic.MQTT, Payload: []byte(payload), QoS: 1, Retain: c.family == broker.FamilyNotice}
			refused := who.name != "backend" && b.refusesWills
			rc, err := connect(who.user, secrets[who.user], who.user, will)
			switch {
			case err != nil && !refused:
				t.Errorf("%s with a will on %s: %v", who.name, c.name, err)
				continue
			case err != nil:
				continue // refused at CONNECT, as it must be
			case refused:
				t.Errorf("%s with a will on %s: connected, want refused", who.name, c.name)
			}
			rc.Abort()
			if allowed(c.pubBy, who.name) && !refused {
				if !watch.wait(payload, 5*time.Second) {
					t.Errorf("%s's will on %s: not delivered, want delivered", who.name, c.name)
				}
				continue
			}
			denied = append(denied, payload)
		}
	}
	probe, _ := topics.Report("probe")
	sentinel, err := connect(accBackend2, accBackend2Secret, accBackend2,
		&paho.WillMessage{Topic: probe.MQTT, Payload: []byte("will sentinel"), QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	sentinel.Abort()
	if !watch.wait("will sentinel", 5*time.Second) {
		t.Fatal("the backend's sentinel will was not delivered")
	}
	for _, p := range denied {
		if watch.has(p) {
			t.Errorf("%s: delivered, want refused", p)
		}
	}
	if err := watcher.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// Client ids. The victims ask for the client id `firmcast serve`
	// uses, or their device id.
	own := func(dev string) string { tp, _ := topics.Report(dev); return tp.MQTT }
	for _, r := range []struct {
		name, victim, victimID, victimTopic, attacker, asks string
	}{
		{"A asks for the backend's client id", backendUser, "publisher", probe.MQTT, accDevA, "publisher"},
		{"a device whose id is the backend's client id", backendUser, "publisher", probe.MQTT, accImpostor, "publisher"},
		{"another backend identity asks for the backend's client id", backendUser, "publisher", probe.MQTT, accBackend2, "publisher"},
		{"A asks for B's client id", accDevB, accDevB, own(accDevB), accDevA, accDevB},
		{"the backend asks for A's client id", accDevA, accDevA, own(accDevA), accBackend2, accDevA},
	} {
		n++
		// The victim of the case before used the same client id and was
		// just aborted: the broker may still be ending that connection when
		// this one takes the id over, and drop it. That is set-up, not the
		// attack: connect again (at most 3 tries) until the victim is alive.
		var victim *testutil.RawMQTT
		for try := 1; ; try++ {
			v, err := connect(r.victim, secrets[r.victim], r.victimID, nil)
			if err != nil {
				t.Fatalf("%s: victim %s: %v", r.name, r.victim, err)
			}
			err = v.Alive(r.victimTopic)
			if err == nil {
				victim = v
				break
			}
			v.Abort()
			if try == 3 {
				t.Fatalf("%s: victim %s before the attack: %v", r.name, r.victim, err)
			}
		}
		attacker, cerr := connect(r.attacker, secrets[r.attacker], r.asks, nil)
		if err := victim.Alive(r.victimTopic); err != nil {
			t.Errorf("%s: %s connecting as client %q (connect: %v) dropped %s: %v", r.name, r.attacker, r.asks, cerr, r.victim, err)
		}
		victim.Abort()
		if cerr == nil {
			attacker.Abort()
		}
	}
	return n
}
