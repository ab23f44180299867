package schemas

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultRoot is the topic root used when none is configured.
const DefaultRoot = "firmcast"

// MaxIDLen is the longest identifier (device, class, campaign, root
// segment) accepted in a topic.
const MaxIDLen = 64

// ErrBadIdentifier is returned when an identifier cannot be placed in a
// topic: empty, longer than MaxIDLen, or containing anything but printable
// ASCII, or one of the separators, wildcards and special characters
// / . + # * > $ : (":" would break mosquitto's password file, where a
// device id is a user name).
var ErrBadIdentifier = errors.New("schemas: bad identifier")

// Topic is one destination named for both transports: the MQTT topic
// (slash separated) and the NATS subject (dot separated).
type Topic struct {
	MQTT string
	NATS string
}

// Topics builds every topic and subject firmcast uses, under one root, so
// tenants and tests are isolated from each other:
//
//	<root>/v1/dev/<device>/notice      per-device notice (retained)
//	<root>/v1/dev/<device>/report      device reports
//	<root>/v1/dev/<device>/chunks      chunks requested by one device
//	<root>/v1/dev/<device>/req         chunk requests of one device
//	<root>/v1/class/<class>/announce   class-wide announcement
//	<root>/v1/img/<digest-hex>/chunks  chunk broadcast of one image (QoS 0)
//	<root>/v1/api/<op>...              campaign API (request/reply)
//
// The NATS subject is the same with "." for "/". The zero value is not
// usable; call NewTopics. Topics is a value and safe for concurrent use.
type Topics struct {
	root []string
}

// NewTopics returns the topic builder for root. The root may hold several
// segments separated by "/" (for example "tenant-a/firmcast"); each segment
// must be a valid identifier (ErrBadIdentifier). An empty root means
// DefaultRoot.
func NewTopics(root string) (Topics, error) {
	if root == "" {
		root = DefaultRoot
	}
	segs := strings.Split(root, "/")
	for _, s := range segs {
		if err := CheckID("root segment", s); err != nil {
			return Topics{}, err
		}
	}
	return Topics{root: segs}, nil
}

// MustTopics is NewTopics for constant roots; it panics on a bad root.
func MustTopics(root string) Topics {
	t, err := NewTopics(root)
	if err != nil {
		panic(err)
	}
	return t
}

// Root returns the root as configured, slash separated.
func (t Topics) Root() string { return strings.Join(t.root, "/") }

// CheckID returns nil when id can be used as one topic segment, and an
// error wrapping ErrBadIdentifier that says why otherwise. what names the
// identifier in the error ("device id", "class id", ...).
func CheckID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s is empty", ErrBadIdentifier, what)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: %s is %d bytes, over %d", ErrBadIdentifier, what, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c == '/' || c == '.' || c == '+' || c == '#' || c == '*' || c == '>' || c == '$' || c == ':':
			return fmt.Errorf("%w: %s %q contains %q", ErrBadIdentifier, what, id, c)
		case c <= ' ' || c >= 0x7f:
			return fmt.Errorf("%w: %s %q contains a space, control or non-ASCII byte at %d", ErrBadIdentifier, what, id, i)
		}
	}
	return nil
}

func (t Topics) build(parts ...string) Topic {
	all := make([]string, 0, len(t.root)+1+len(parts))
	all = append(all, t.root...)
	all = append(all, "v1")
	all = append(all, parts...)
	return Topic{MQTT: strings.Join(all, "/"), NATS: strings.Join(all, ".")}
}

func (t Topics) checked(what, id string, parts ...string) (Topic, error) {
	if len(t.root) == 0 {
		return Topic{}, fmt.Errorf("%w: topics not initialised (use NewTopics)", ErrBadIdentifier)
	}
	check := CheckID
	if what == "image digest" {
		check = func(_, s string) error { return checkDigestHex(s) }
	}
	if err := check(what, id); err != nil {
		return Topic{}, err
	}
	return t.build(parts...), nil
}

// Notice is the per-device notice topic. Notices are retained (MQTT) or
// kept as the last message per subject in a JetStream stream (NATS), so a
// device that reconnects sees what is pending for it.
func (t Topics) Notice(device string) (Topic, error) {
	return t.checked("device id", device, "dev", device, "notice")
}

// Announce is the class-wide announcement topic.
func (t Topics) Announce(class string) (Topic, error) {
	return t.checked("class id", class, "class", class, "announce")
}

// Report is the topic a device publishes its reports on.
func (t Topics) Report(device string) (Topic, error) {
	return t.checked("device id", device, "dev", device, "report")
}

// ChunkReply is the topic on which chunks requested by one device are sent.
func (t Topics) ChunkReply(device string) (Topic, error) {
	return t.checked("device id", device, "dev", device, "chunks")
}

// Chunks is the broadcast chunk topic of one image; digestHex is the
// lowercase hex SHA-256 of the image (DigestHex), exactly 64 digits.
func (t Topics) Chunks(digestHex string) (Topic, error) {
	return t.checked("image digest", digestHex, "img", digestHex, "chunks")
}

// ChunkRequestsFrom is the topic on which one device asks for chunks (of
// any image; the request names it). Each device has its own, and the
// access policy lets a device publish only on its own, so the topic a
// request arrives on names its requester: the publisher answers that
// device alone, whatever the request's own fields say. Publishers consume
// every device's through a shared subscription (MQTT v5) or a queue group
// (NATS); see ChunkRequestsAll.
func (t Topics) ChunkRequestsFrom(device string) (Topic, error) {
	return t.checked("device id", device, "dev", device, "req")
}

// ChunkRequestsAll is the wildcard over every device's chunk request
// topic, for publishers.
func (t Topics) ChunkRequestsAll() Topic {
	tp := t.build("dev", "+", "req")
	tp.NATS = strings.Replace(tp.NATS, "+", "*", 1)
	return tp
}

// ChunkRequester returns the device whose chunk request topic (either
// form, see ChunkRequestsFrom) topic is, and false when topic is none.
func (t Topics) ChunkRequester(topic string) (string, bool) {
	for _, sep := range []string{"/", "."} {
		prefix := strings.Join(append(append([]string{}, t.root...), "v1", "dev"), sep) + sep
		rest, ok := strings.CutPrefix(topic, prefix)
		if !ok || len(t.root) == 0 {
			continue
		}
		dev, ok := strings.CutSuffix(rest, sep+"req")
		if ok && CheckID("device id", dev) == nil {
			return dev, true
		}
	}
	return "", false
}

// ReportsAll is the wildcard over every device's report topic, for the
// backend.
func (t Topics) ReportsAll() Topic {
	tp := t.build("dev", "+", "report")
	tp.NATS = strings.Replace(tp.NATS, "+", "*", 1)
	return tp
}

// NoticesAll is the wildcard over every device's notice topic, used by the
// backend to find and clear retained notices.
func (t Topics) NoticesAll() Topic {
	tp := t.build("dev", "+", "notice")
	tp.NATS = strings.Replace(tp.NATS, "+", "*", 1)
	return tp
}

// API is the NATS request/reply subject (and MQTT topic) of one campaign
// API operation, for example "campaign.create".
func (t Topics) API(op string) (Topic, error) {
	if len(t.root) == 0 {
		return Topic{}, fmt.Errorf("%w: topics not initialised (use NewTopics)", ErrBadIdentifier)
	}
	parts := strings.Split(op, ".")
	for _, p := range parts {
		if err := CheckID("api operation", p); err != nil {
			return Topic{}, err
		}
	}
	return t.build(append([]string{"api"}, parts...)...), nil
}

// SharedGroup is the name of the MQTT v5 shared-subscription group and NATS
// queue group through which publishers share chunk requests.
const SharedGroup = "firmcast-publishers"

// Shared returns the MQTT v5 shared subscription filter for topic filter f.
func Shared(f string) string { return "$share/" + SharedGroup + "/" + f }
