package schemas

import (
	"errors"
	"strings"
	"testing"
)

func TestTopics(t *testing.T) {
	tp := MustTopics("t-1/firmcast")
	d := DigestHex(rep(0xab, 32))
	build := func(f func(string) (Topic, error), id string) Topic {
		t.Helper()
		got, err := f(id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		return got
	}
	api, err := tp.API("campaign.create")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		got  Topic
		mqtt string
	}{
		{build(tp.Notice, "dev-42"), "t-1/firmcast/v1/dev/dev-42/notice"},
		{build(tp.Report, "dev-42"), "t-1/firmcast/v1/dev/dev-42/report"},
		{build(tp.ChunkReply, "dev-42"), "t-1/firmcast/v1/dev/dev-42/chunks"},
		{build(tp.Announce, "sensor-v2"), "t-1/firmcast/v1/class/sensor-v2/announce"},
		{build(tp.Chunks, d), "t-1/firmcast/v1/img/" + d + "/chunks"},
		{build(tp.ChunkRequestsFrom, "dev-42"), "t-1/firmcast/v1/dev/dev-42/req"},
		{api, "t-1/firmcast/v1/api/campaign/create"},
		{tp.ChunkRequestsAll(), "t-1/firmcast/v1/dev/+/req"},
		{tp.ReportsAll(), "t-1/firmcast/v1/dev/+/report"},
		{tp.NoticesAll(), "t-1/firmcast/v1/dev/+/notice"},
	}
	for _, tt := range tests {
		if tt.got.MQTT != tt.mqtt {
			t.Errorf("MQTT %q, want %q", tt.got.MQTT, tt.mqtt)
		}
		nats := strings.ReplaceAll(strings.ReplaceAll(tt.mqtt, "/", "."), "+", "*")
		if tt.got.NATS != nats {
			t.Errorf("NATS %q, want %q", tt.got.NATS, nats)
		}
	}
	if got := MustTopics("").Root(); got != DefaultRoot {
		t.Errorf("default root %q", got)
	}
	if got := Shared(tp.ChunkRequestsAll().MQTT); got != "$share/firmcast-publishers/t-1/firmcast/v1/dev/+/req" {
		t.Errorf("Shared: %q", got)
	}
}

func TestTopicsRejectBadIdentifiers(t *testing.T) {
	tp := MustTopics("firmcast")
	bad := []struct{ id, why string }{
		{"", "is empty"},
		{strings.Repeat("x", MaxIDLen+1), "65 bytes, over 64"},
		{"a/b", `contains '/'`},
		{"a.b", `contains '.'`},
		{"a+", `contains '+'`},
		{"#", `contains '#'`},
		{"*", `contains '*'`},
		{"a>", `contains '>'`},
		{"$SYS", `contains '$'`},
		{"aa:bb", `contains ':'`},
		{"a b", "space, control or non-ASCII"},
		{"a\tb", "space, control or non-ASCII"},
		{"a\x00", "space, control or non-ASCII"},
		{"a\x7f", "space, control or non-ASCII"},
		{"capteur-é", "space, control or non-ASCII"},
	}
	for _, b := range bad {
		for name, f := range map[string]func(string) (Topic, error){
			"Notice": tp.Notice, "Report": tp.Report, "ChunkReply": tp.ChunkReply, "ChunkRequestsFrom": tp.ChunkRequestsFrom,
			"Announce": tp.Announce, "API": tp.API,
		} {
			if name == "API" && b.id == "a.b" {
				continue // API ops are dot-separated segments
			}
			if _, err := f(b.id); !errors.Is(err, ErrBadIdentifier) || !strings.Contains(err.Error(), b.why) {
				t.Errorf("%s(%q): %v, want ErrBadIdentifier saying %q", name, b.id, err, b.why)
			}
		}
		if _, err := NewTopics(b.id); b.id != "" && !errors.Is(err, ErrBadIdentifier) && !strings.Contains(b.id, "/") {
			t.Errorf("NewTopics(%q): %v", b.id, err)
		}
	}
	// 64 bytes is accepted.
	if _, err := tp.Notice(strings.Repeat("x", MaxIDLen)); err != nil {
		t.Errorf("64-byte id: %v", err)
	}
	for _, root := range []string{"a//b", "/a", "a/", "a.b", "a/+", "$SYS/x"} {
		if _, err := NewTopics(root); !errors.Is(err, ErrBadIdentifier) {
			t.Errorf("NewTopics(%q): %v", root, err)
		}
	}
	if _, err := tp.API("campaign..create"); !errors.Is(err, ErrBadIdentifier) {
		t.Errorf("API with empty segment: %v", err)
	}
	var zero Topics
	if _, err := zero.Notice("dev-1"); !errors.Is(err, ErrBadIdentifier) {
		t.Errorf("zero Topics: %v", err)
	}
}

// ChunkRequester names the device of a chunk request topic in either
// form, and nothing else.
func TestChunkRequester(t *testing.T) {
	tp := MustTopics("t-1/firmcast")
	for _, tc := range []struct {
		topic, dev string
		ok         bool
	}{
		{"t-1/firmcast/v1/dev/dev-42/req", "dev-42", true},
		{"t-1.firmcast.v1.dev.dev-42.req", "dev-42", true},
		{"t-1/firmcast/v1/dev/+/req", "", false},
		{"t-1.firmcast.v1.dev.*.req", "", false},
		{"t-1/firmcast/v1/dev/a/b/req", "", false},
		{"t-1.firmcast.v1.dev.a.b.req", "", false},
		{"t-1/firmcast/v1/dev//req", "", false},
		{"t-1/firmcast/v1/dev/dev-42/report", "", false},
		{"t-2/firmcast/v1/dev/dev-42/req", "", false},
		{"t-1/firmcast/v1/img/" + DigestHex(rep(1, 32)) + "/req", "", false},
		{"t-1/firmcast/v1/dev/dev-42/req/x", "", false},
		{"t-1/firmcast.v1.dev.dev-42.req", "", false},
	} {
		dev, ok := tp.ChunkRequester(tc.topic)
		if dev != tc.dev || ok != tc.ok {
			t.Errorf("ChunkRequester(%q) = %q, %v; want %q, %v", tc.topic, dev, ok, tc.dev, tc.ok)
		}
	}
	if _, ok := (Topics{}).ChunkRequester("v1/dev/x/req"); ok {
		t.Error("zero Topics named a requester")
	}
}

func TestTopicsDigest(t *testing.T) {
	tp := MustTopics("firmcast")
	good := DigestHex(rep(0x0f, 32))
	for _, d := range []string{"", "abc", good[:63], good + "0", strings.ToUpper(good), good[:63] + "g", good[:62] + "/+"} {
		for _, f := range []func(string) (Topic, error){tp.Chunks} {
			if _, err := f(d); !errors.Is(err, ErrBadIdentifier) || !strings.Contains(err.Error(), "image digest") {
				t.Errorf("digest %q: %v", d, err)
			}
		}
		if _, err := ParseDigestHex(d); !errors.Is(err, ErrBadIdentifier) {
			t.Errorf("ParseDigestHex(%q): %v", d, err)
		}
	}
	b, err := ParseDigestHex(good)
	if err != nil || DigestHex(b) != good {
		t.Errorf("ParseDigestHex round trip: %x %v", b, err)
	}
}

// FuzzTopicIdentifier: an accepted identifier never adds a level, a
// wildcard or a special prefix to either form of a topic.
func FuzzTopicIdentifier(f *testing.F) {
	for _, s := range []string{"dev-42", "", "a/b", "a.b", "+", "#", "*", ">", "$SYS", "a:b", "a b", "é", strings.Repeat("x", 65)} {
		f.Add(s)
	}
	tp := MustTopics("r")
	f.Fuzz(func(t *testing.T, id string) {
		got, err := tp.Notice(id)
		if err != nil {
			if !errors.Is(err, ErrBadIdentifier) {
				t.Fatalf("error without ErrBadIdentifier: %v", err)
			}
			return
		}
		if got.MQTT != "r/v1/dev/"+id+"/notice" || got.NATS != "r.v1.dev."+id+".notice" {
			t.Fatalf("topic %+v", got)
		}
		if strings.Count(got.MQTT, "/") != 4 || strings.Count(got.NATS, ".") != 4 || strings.ContainsAny(got.MQTT, "+#*>$: \x00") {
			t.Fatalf("identifier %q changed the topic's shape: %+v", id, got)
		}
	})
}
