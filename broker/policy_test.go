package broker

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/schemas"
)

func TestPolicyAllow(t *testing.T) {
	p := Policy{Topics: schemas.MustTopics("acme/fc")}
	dev := Identity{Username: "dev1", Role: RoleDevice, Device: "dev1", Class: "sensor"}
	noClass := Identity{Username: "dev3", Role: RoleDevice, Device: "dev3"}
	be := Identity{Username: "backend", Role: RoleBackend}
	svc := Identity{Username: "svc", Role: RoleService}
	const img = "acme/fc/v1/img/abc123"
	for _, c := range []struct {
		id    Identity
		topic string
		write bool
		want  bool
	}{
		// Device reads.
		{dev, "acme/fc/v1/dev/dev1/notice", false, true},
		{dev, "acme/fc/v1/dev/dev1/chunks", false, true},
		{dev, "acme/fc/v1/class/sensor/announce", false, true},
		{dev, img + "/chunks", false, true},
		{dev, "acme/fc/v1/img/+/chunks", false, true},
		{dev, "acme/fc/v1/dev/dev2/notice", false, false},
		{dev, "acme/fc/v1/dev/+/notice", false, false},
		{dev, "acme/fc/v1/dev/dev1/#", false, false},
		{dev, "acme/fc/v1/dev/dev1/report", false, false},
		{dev, "acme/fc/v1/class/camera/announce", false, false},
		{dev, "acme/fc/v1/class/+/announce", false, false},
		{dev, "acme/fc/v1/img/#/chunks", false, false},
		{dev, "acme/fc/v1/img//chunks", false, false},
		{dev, "acme/fc/v1/img/a/b/chunks", false, false},
		{dev, "acme/fc/#", false, false},
		{dev, "$SYS/broker/clients", false, false},
		{dev, "$share/firmcast-publishers/" + img + "/req", false, false},
		{dev, "other/v1/dev/dev1/notice", false, false},
		{noClass, "acme/fc/v1/class/sensor/announce", false, false},
		// Device writes.
		{dev, "acme/fc/v1/dev/dev1/report", true, true},
		{dev, "acme/fc/v1/dev/dev1/req", true, true},
		{dev, "acme/fc/v1/dev/dev2/req", true, false},
		{dev, "acme/fc/v1/dev/+/req", true, false},
		{dev, "acme/fc/v1/dev/dev1/req", false, false},
		{dev, img + "/req", true, false},
		{dev, "acme/fc/v1/img/+/req", true, false},
		{dev, "acme/fc/v1/dev/dev2/report", true, false},
		{dev, "acme/fc/v1/dev/dev1/notice", true, false},
		{dev, img + "/chunks", true, false},
		{dev, "acme/fc/v1/dev/dev2/chunks", true, false},
		{dev, "acme/fc/v1/class/sensor/announce", true, false},
		{dev, "acme/fc/v1/api/campaign/create", true, false},
		// Backend.
		{be, "acme/fc/v1/dev/dev1/notice", true, true},
		{be, img + "/chunks", true, true},
		{be, "acme/fc/#", false, true},
		{be, "$share/firmcast-publishers/acme/fc/v1/dev/+/req", false, true},
		{be, "$share/firmcast-publishers/acme/fc/v1/img/x/req", true, false},
		{be, "other/v1/dev/dev1/notice", true, false},
		{be, "acme/fcx/v1/dev/dev1/notice", false, false},
		{be, "$SYS/#", false, false},
		// A service: nothing on MQTT (it calls the API over NATS).
		{svc, "acme/fc/v1/api/campaign/create", true, false},
		{svc, "acme/fc/v1/api/inbox/svc/x", false, false},
		{svc, "acme/fc/v1/dev/dev1/notice", true, false},
		{svc, "acme/fc/#", false, false},
		// Nobody.
		{Identity{Username: "x"}, "acme/fc/v1/dev/x/report", true, false},
		{Identity{Username: "x", Role: RoleDevice}, "acme/fc/v1/dev/x/report", true, false},
	} {
		if got := p.Allow(c.id, c.topic, c.write); got != c.want {
			t.Errorf("%s %s write=%v: allowed=%v, want %v", c.id.Username, c.topic, c.write, got, c.want)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, c := range []struct {
		url, user, pass, wantURL, wantUser, wantPass string
		kind                                         Dialect
		tls                                          bool
	}{
		{url: "mqtt://localhost", wantURL: "mqtt://localhost:1883", kind: DialectMQTT},
		{url: "mqtts://b.example:8884", wantURL: "mqtts://b.example:8884", kind: DialectMQTT, tls: true},
		{url: "nats://dev1:s3cret@127.0.0.1:4222", wantURL: "nats://127.0.0.1:4222", wantUser: "dev1", wantPass: "s3cret", kind: DialectNATS},
		{url: "tls://n.example", wantURL: "tls://n.example:4222", kind: DialectNATS, tls: true},
		{url: "MQTT://u:p@h:1", user: "v", pass: "q", wantURL: "mqtt://h:1", wantUser: "v", wantPass: "q", kind: DialectMQTT},
	} {
		ep, err := parseEndpoint(Config{URL: c.url, Username: c.user, Password: c.pass})
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if ep.url.String() != c.wantURL || ep.Username != c.wantUser || ep.Password != c.wantPass || ep.kind != c.kind || ep.tls != c.tls {
			t.Errorf("%s: got %s user=%q pass=%q kind=%d tls=%v", c.url, ep.url, ep.Username, ep.Password, ep.kind, ep.tls)
		}
		if !strings.HasPrefix(ep.ClientID, "fc-") || ep.SessionExpiry != DefaultSessionExpiry {
			t.Errorf("%s: defaults not applied: client %q expiry %v", c.url, ep.ClientID, ep.SessionExpiry)
		}
	}
	list, err := parseEndpoint(Config{URL: "nats://u:p@n1:4222, nats://n2,nats://n3:5222"})
	if err != nil || list.serverList() != "nats://n1:4222,nats://n2:4222,nats://n3:5222" || list.Username != "u" {
		t.Errorf("server list: %q user %q err %v", list.serverList(), list.Username, err)
	}
	shared, err := parseEndpoint(Config{URL: "mqtt://h", SharedMember: true, SessionExpiry: 99})
	if err != nil || shared.SessionExpiry != 0 {
		t.Errorf("shared member: expiry %v, err %v; want 0", shared.SessionExpiry, err)
	}
	for _, bad := range []Config{
		{},
		{URL: "http://h"},
		{URL: "mqtt://"},
		{URL: "mqtt://h/some/path"},
		{URL: "mqtt://u:topsecret@h:%zz"},
		{URL: "nats://h", ClientID: "a/b"},
		{URL: "mqtt://a,mqtt://b"},
		{URL: "nats://a,tls://b"},
		{URL: "nats://a,"},
		{URL: "nats://u:topsecret@a,http://b"},
	} {
		_, err := parseEndpoint(bad)
		if !errors.Is(err, ErrBadURL) {
			t.Errorf("%+v: %v, want ErrBadURL", bad, err)
		}
		if err != nil && strings.Contains(err.Error(), "topsecret") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}

func TestTopicMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b/c", "a/b/c", true},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a/b/c", true},
		{"a/+", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"$share/g/a/+/c", "a/x/c", true},
		{"$share/g", "a", false},
	} {
		if got := mqttMatch(c.filter, c.topic); got != c.want {
			t.Errorf("mqttMatch(%q, %q) = %v", c.filter, c.topic, got)
		}
		nf := strings.NewReplacer("/", ".", "+", "*", "#", ">").Replace(c.filter)
		if strings.HasPrefix(c.filter, "$share") {
			continue
		}
		if got := natsMatch(nf, strings.ReplaceAll(c.topic, "/", ".")); got != c.want {
			t.Errorf("natsMatch(%q) = %v", nf, got)
		}
	}
}

func TestCredentialStore(t *testing.T) {
	s, err := LoadCredentials(strings.NewReader(`
# comment
backend  api   apisecret
service  svc   svcsecret
device   dev1  s1  sensor   # trailing comment
device   dev2  ` + HashSecret("s2") + `
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := s.Authenticate(ctx, "dev1", "s1")
	if err != nil || id != (Identity{Username: "dev1", Role: RoleDevice, Device: "dev1", Class: "sensor"}) {
		t.Fatalf("dev1: %+v %v", id, err)
	}
	if id, err := s.Authenticate(ctx, "dev2", "s2"); err != nil || id.Device != "dev2" {
		t.Fatalf("dev2 (pre-hashed): %+v %v", id, err)
	}
	if id, err := s.Authenticate(ctx, "api", "apisecret"); err != nil || id.Role != RoleBackend {
		t.Fatalf("backend: %+v %v", id, err)
	}
	if id, err := s.Authenticate(ctx, "svc", "svcsecret"); err != nil || id != (Identity{Username: "svc", Role: RoleService}) {
		t.Fatalf("service: %+v %v", id, err)
	}
	for _, c := range [][2]string{{"dev1", "s2"}, {"dev1", ""}, {"nobody", "s1"}, {"", ""}, {"api", "APISECRET"}} {
		if _, err := s.Authenticate(ctx, c[0], c[1]); !errors.Is(err, ErrNotAuthorized) {
			t.Errorf("%q/%q: %v, want ErrNotAuthorized", c[0], c[1], err)
		}
	}
	for _, bad := range []string{
		"admin root pw",
		"backend api",
		"backend api s extra",
		"service svc",
		"service svc s cls",
		"service s/vc s",
		"device dev1 s1 cls extra",
		"device dev/1 s1",
		"device dev1 s1 cl+ass",
		"device dev1 sha256:nothex",
		"device dev1 s1\ndevice dev1 s2",
	} {
		if _, err := LoadCredentials(strings.NewReader(bad)); !errors.Is(err, ErrBadCredentials) || !strings.Contains(err.Error(), "line") {
			t.Errorf("%q: %v, want ErrBadCredentials naming the line", bad, err)
		}
	}
}

func FuzzReadAccounts(f *testing.F) {
	for _, s := range []string{"backend api s\ndevice d s c\n", "service svc s\n", "# x\n\n", "device dev1 " + HashSecret("x"), "device d\x00 s", "backend a b c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		as, err := ReadAccounts(strings.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("error %v does not wrap ErrBadCredentials", err)
			}
			return
		}
		s, err := NewCredentialStoreFrom(as)
		if err != nil {
			t.Fatalf("accounts accepted by ReadAccounts refused by the store: %v", err)
		}
		for _, a := range as {
			if a.Secret != "" {
				if _, err := s.Authenticate(context.Background(), a.Username, a.Secret); err != nil {
					t.Fatalf("%s cannot authenticate with its own secret: %v", a.Username, err)
				}
			}
		}
	})
}

// TestMosquittoPasswordLine pins the format against a line computed
// independently (Python hashlib.pbkdf2_hmac('sha512', b'secret',
// bytes(range(12)), 101, 64)), the format mosquitto_passwd 2.0 writes.
func TestMosquittoPasswordLine(t *testing.T) {
	salt := bytes.NewReader([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
	got, err := MosquittoPasswordLine("alice", "secret", 101, salt)
	if err != nil {
		t.Fatal(err)
	}
	const want = "alice:$7$101$AAECAwQFBgcICQoL$Xr99N9ym9ys8TWxis5ajETJq6EVYzmc6nb8t3pUYnPBbCAbICS4xejTltonXWCtJNBvA+By+TXUqU6qCblO00w=="
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if _, err := MosquittoPasswordLine("a:b", "s", 1, bytes.NewReader(make([]byte, 12))); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("user with ':': %v, want ErrBadCredentials", err)
	}
}

func TestDispatcherOrder(t *testing.T) {
	got := make(chan int, 1000)
	block := make(chan struct{})
	d := newDispatcher(context.Background(), func(_ context.Context, m Message) {
		<-block
		got <- int(m.Payload[0])<<8 | int(m.Payload[1])
	}, SubscribeOptions{Family: FamilyControl})
	defer d.close()
	for i := range 1000 {
		d.enqueue(Message{Payload: []byte{byte(i >> 8), byte(i)}}) // never blocks, though the handler does
	}
	close(block)
	for i := range 1000 {
		if v := <-got; v != i {
			t.Fatalf("message %d delivered as %d", i, v)
		}
	}
}
