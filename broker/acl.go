package broker

import (
	"strings"

	"github.com/firmcast/firmcast/schemas"
)

// Policy is firmcast's broker access policy over one topic root, stated on
// MQTT topic names and filters:
//
//   - a backend identity may publish and subscribe (also through
//     $share/<group>/) to anything under the root;
//   - a device may subscribe only to its own notice topic, its own chunk
//     reply topic, its class's announce topic, and image chunk broadcasts
//     (root/v1/img/<digest or +>/chunks);
//   - a device may publish only its own reports and its own chunk
//     requests (root/v1/dev/<device>/req), so the topic of a request
//     names its requester;
//   - a service identity may do nothing on MQTT (the embedded broker
//     refuses its CONNECT, the mosquitto export leaves it out): it calls
//     the campaign API over NATS only (NATSPermissions), where it may
//     publish campaign API requests and read its own inbox;
//   - nothing else, for anybody: no wildcard or $SYS reads for devices.
//
// The embedded MQTT broker enforces it through its auth hook, the embedded
// NATS server through per-user permissions (NATSPermissions), and an
// external mosquitto through the files MosquittoConfig writes. Policy is a
// value, safe for concurrent use.
type Policy struct {
	Topics schemas.Topics
}

// Allow reports whether id may publish (write) to topic, or subscribe to
// the filter / receive a message on the topic (read).
func (p Policy) Allow(id Identity, topic string, write bool) bool {
	root := p.Topics.Root()
	switch id.Role {
	case RoleBackend:
		if strings.HasPrefix(topic, "$share/") {
			parts := strings.SplitN(topic, "/", 3)
			if len(parts) != 3 || write {
				return false
			}
			topic = parts[2]
		}
		return strings.HasPrefix(topic, root+"/")
	case RoleDevice:
		if id.Device == "" {
			return false
		}
		if write {
			for _, f := range []func(string) (schemas.Topic, error){p.Topics.Report, p.Topics.ChunkRequestsFrom} {
				if t, err := f(id.Device); err == nil && topic == t.MQTT {
					return true
				}
			}
			return false
		}
		for _, f := range []func(string) (schemas.Topic, error){p.Topics.Notice, p.Topics.ChunkReply} {
			if t, err := f(id.Device); err == nil && topic == t.MQTT {
				return true
			}
		}
		if id.Class != "" {
			if t, err := p.Topics.Announce(id.Class); err == nil && topic == t.MQTT {
				return true
			}
		}
		_, ok := imageSegment(root, topic, "chunks")
		return ok
	}
	// RoleService: nothing on MQTT (see NATSPermissions for NATS).
	return false
}

// imageSegment matches root/v1/img/<seg>/<leaf> and returns seg, which is
// either "+" or a valid identifier.
func imageSegment(root, topic, leaf string) (string, bool) {
	prefix := root + "/v1/img/"
	suffix := "/" + leaf
	if !strings.HasPrefix(topic, prefix) || !strings.HasSuffix(topic, suffix) || len(topic) <= len(prefix)+len(suffix) {
		return "", false
	}
	seg := topic[len(prefix) : len(topic)-len(suffix)]
	if seg == "+" {
		return seg, true
	}
	if schemas.CheckID("image digest", seg) != nil {
		return "", false
	}
	return seg, true
}
