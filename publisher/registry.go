package publisher

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// Device is a registered device, as the APIs show it. It has no secret
// or hash of one: those stay in the registry (deviceRecord).
type Device struct {
	ID            string   `json:"id"`
	Class         string   `json:"class"`
	Groups        []string `json:"groups,omitempty"`
	Tags          []string `json:"tags,omitempty"`
	ActiveVersion uint64   `json:"active_version"`
	// Image is the hex digest of the image the device runs, as its last
	// report says (schemas.DeviceReport.ActiveDigest) or, from a device
	// that does not say, as firmcast last saw it confirm (or skip,
	// already running it) in a campaign; empty when unknown. Campaigns
	// compare it with their image (AllowDowngrade) and make deltas from
	// it.
	Image      string    `json:"image,omitempty"`
	LastReport *Report   `json:"last_report,omitempty"`
	Created    time.Time `json:"created"`
}

// deviceRecord is a device as the registry stores it: the Device and the
// hash of its broker secret, which never leaves the publisher (the broker
// auth hook and the mosquitto password export read it here).
type deviceRecord struct {
	Device
	// SecretHash is the device's broker secret in mosquitto's PBKDF2-SHA512
	// "$7$" format, so a mosquitto password file can carry it unchanged.
	SecretHash string `json:"secret_hash"`
}

// Report is a device report as kept in state (a JSON view of
// schemas.DeviceReport).
type Report struct {
	Campaign      string    `json:"campaign,omitempty"`
	State         string    `json:"state"`
	BytesDone     uint64    `json:"bytes_done,omitempty"`
	BytesTotal    uint64    `json:"bytes_total,omitempty"`
	ActiveVersion uint64    `json:"active_version"`
	Code          string    `json:"code,omitempty"`
	Text          string    `json:"text,omitempty"`
	Counter       uint64    `json:"counter"`
	DeviceTime    int64     `json:"device_time_ms"`
	Received      time.Time `json:"received"`
}

// DeviceDetail is a device with its campaign history, for `device show`.
type DeviceDetail struct {
	Device
	Campaigns []DeviceState `json:"campaigns,omitempty"`
}

// NewDevice describes a device to register.
type NewDevice struct {
	ID     string   `json:"id"`
	Class  string   `json:"class"`
	Groups []string `json:"groups,omitempty"`
	Tags   []string `json:"tags,omitempty"`
	// Secret is the device's broker secret; empty = generate one (192
	// random bits). A given secret must hold at least MinSecretBits (see
	// CheckSecretStrength).
	Secret string `json:"secret,omitempty"`
}

// MinSecretBits is the least strength of a device secret, in bits.
const MinSecretBits = 128

// CheckSecretStrength refuses a device secret that cannot hold
// MinSecretBits even if its characters were drawn at random: its length
// times the bits per character of the smallest alphabet it is written in
// (decimal digits 3.3, hex 4, base64 6, any printable ASCII 6.5), so at
// least 32 hex or 22 base64 characters. It also refuses secrets over 256
// bytes or with spaces or control characters. Errors wrap ErrInvalid.
func CheckSecretStrength(secret string) error {
	return checkStrength("device secret", secret, "omit the secret to have one generated")
}

// checkStrength is CheckSecretStrength for any secret, named what in
// errors, with hint saying how to get a good one.
func checkStrength(what, secret, hint string) error {
	if len(secret) > 256 {
		return fmt.Errorf("%w: %s is %d bytes, max 256", ErrInvalid, what, len(secret))
	}
	digits, hexa, b64 := true, true, true
	for i := 0; i < len(secret); i++ {
		c := secret[i]
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: %s contains a space, control or non-ASCII byte at %d", ErrInvalid, what, i)
		}
		isDigit := c >= '0' && c <= '9'
		isHex := isDigit || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
		digits = digits && isDigit
		hexa = hexa && isHex
		b64 = b64 && (isDigit || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("-_+/=", c) >= 0)
	}
	per := 6.55 // log2(94)
	switch {
	case digits:
		per = 3.32
	case hexa:
		per = 4
	case b64:
		per = 6
	}
	if bits := float64(len(secret)) * per; bits < MinSecretBits {
		return fmt.Errorf("%w: %s of %d characters holds at most %.0f bits, need %d (at least 32 hex or 22 base64 characters of random data; %s)",
			ErrInvalid, what, len(secret), bits, MinSecretBits, hint)
	}
	return nil
}

// checkName checks an id, class, group or tag: letters, digits, '-', '_',
// 1..64 bytes (safe in topics, KV keys and URLs).
func checkName(what, s string) error {
	if !kvSafe(s) {
		return fmt.Errorf("%w: %s %q must be 1..64 letters, digits, '-' or '_'", ErrInvalid, what, s)
	}
	return nil
}

const (
	pbkdf2Iter    = broker.MosquittoIterations
	pbkdf2SaltLen = 12
	pbkdf2KeyLen  = 64
)

// HashSecret hashes a device secret in mosquitto's "$7$" format
// (PBKDF2-SHA512, broker.MosquittoIterations iterations, 12-byte salt).
func HashSecret(secret string) (string, error) {
	return hashSecretIter(secret, pbkdf2Iter)
}

func hashSecretIter(secret string, iter int) (string, error) {
	salt := make([]byte, pbkdf2SaltLen)
	rand.Read(salt)
	dk, err := pbkdf2.Key(sha512.New, secret, salt, iter, pbkdf2KeyLen)
	if err != nil {
		return "", err
	}
	return "$7$" + strconv.Itoa(iter) + "$" + base64.StdEncoding.EncodeToString(salt) + "$" + base64.StdEncoding.EncodeToString(dk), nil
}

// VerifySecret reports whether secret matches a hash made by HashSecret
// (or by mosquitto_passwd in "$7$" format).
func VerifySecret(hash, secret string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "7" {
		return false
	}
	iter, err := strconv.Atoi(parts[2])
	if err != nil || iter < 1 || iter > 1_000_000 {
		return false
	}
	salt, err1 := base64.StdEncoding.DecodeString(parts[3])
	want, err2 := base64.StdEncoding.DecodeString(parts[4])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got, err := pbkdf2.Key(sha512.New, secret, salt, iter, len(want))
	return err == nil && subtle.ConstantTimeCompare(got, want) == 1
}

// reservedIDs are names backend identities use as broker user names or
// client ids; reservedPrefixes start the client ids the backend generates
// (broker.Dial's "fc-"). A device may take none of them, matched without
// regard to case: on a broker that binds client ids to user names, a
// device named like the backend would knock it off (and be taken for it
// in logs and audits).
var (
	reservedIDs      = []string{"publisher", "backend", "firmcast", "system", "bootstrap", "admin", "server"}
	reservedPrefixes = []string{"fc-", "firmcast-", "publisher-", "backend-"}
)

// CheckDeviceID returns nil when id may name a new device: a valid name
// (letters, digits, '-', '_', 1..64 bytes) that is not a reserved backend
// name (publisher, backend, firmcast, system, bootstrap, admin, server),
// does not start with a reserved prefix (fc-, firmcast-, publisher-,
// backend-), and is none of reserved (the deployment's backend user
// names, Config.ReservedNames); all matched without regard to case.
// Errors wrap ErrInvalid.
func CheckDeviceID(id string, reserved []string) error {
	if err := checkName("device id", id); err != nil {
		return err
	}
	low := strings.ToLower(id)
	for _, r := range append(slices.Clone(reservedIDs), reserved...) {
		if low == strings.ToLower(r) {
			return fmt.Errorf("%w: device id %q is reserved for a backend identity", ErrInvalid, id)
		}
	}
	for _, pre := range reservedPrefixes {
		if strings.HasPrefix(low, pre) {
			return fmt.Errorf("%w: device id %q starts with %q, reserved for backend client ids", ErrInvalid, id, pre)
		}
	}
	return nil
}

// AddDevice registers a device and returns it with the secret (generated
// when nd.Secret is empty; shown only now). The id must pass
// CheckDeviceID. Once the record is persisted, Config.OnDeviceAdded is
// called. Errors: ErrInvalid, ErrExists.
func (p *Publisher) AddDevice(ctx context.Context, who Principal, nd NewDevice) (Device, string, error) {
	if err := CheckDeviceID(nd.ID, p.cfg.ReservedNames); err != nil {
		return Device{}, "", err
	}
	if err := checkName("class", nd.Class); err != nil {
		return Device{}, "", err
	}
	for _, g := range nd.Groups {
		if err := checkName("group", g); err != nil {
			return Device{}, "", err
		}
	}
	for _, t := range nd.Tags {
		if err := checkName("tag", t); err != nil {
			return Device{}, "", err
		}
	}
	secret := nd.Secret
	if secret == "" {
		var b [24]byte
		rand.Read(b[:])
		secret = base64.RawURLEncoding.EncodeToString(b[:])
	} else if err := CheckSecretStrength(secret); err != nil {
		return Device{}, "", err
	}
	h, err := HashSecret(secret)
	if err != nil {
		return Device{}, "", fmt.Errorf("publisher: hash secret: %w", err)
	}
	d := deviceRecord{Device: Device{ID: nd.ID, Class: nd.Class, Groups: dedup(nd.Groups), Tags: dedup(nd.Tags), Created: p.cfg.Clock.Now().UTC()}, SecretHash: h}
	if _, err := createJSON(ctx, p.st.devices, "device", d.ID, d); err != nil {
		return Device{}, "", err
	}
	p.audit(ctx, who, "device.add", d.ID, "class="+d.Class)
	if p.cfg.OnDeviceAdded != nil {
		p.cfg.OnDeviceAdded(d.ID)
	}
	return d.Device, secret, nil
}

func dedup(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	out := slices.Clone(s)
	sort.Strings(out)
	return slices.Compact(out)
}

// Device returns a registered device (ErrNotFound).
func (p *Publisher) Device(ctx context.Context, id string) (Device, error) {
	d, err := p.deviceRecord(ctx, id)
	return d.Device, err
}

// deviceRecord returns a device as stored, its secret's hash included
// (ErrNotFound).
func (p *Publisher) deviceRecord(ctx context.Context, id string) (deviceRecord, error) {
	if err := checkName("device id", id); err != nil {
		return deviceRecord{}, err
	}
	var d deviceRecord
	_, err := getJSON(ctx, p.st.devices, "device", id, &d)
	return d, err
}

// DeviceDetail returns a device with its per-campaign state, newest first.
func (p *Publisher) DeviceDetail(ctx context.Context, id string) (DeviceDetail, error) {
	d, err := p.Device(ctx, id)
	if err != nil {
		return DeviceDetail{}, err
	}
	dd := DeviceDetail{Device: d}
	p.idx.mu.Lock()
	for _, ci := range p.idx.camps {
		if e, ok := ci.devs[id]; ok {
			dd.Campaigns = append(dd.Campaigns, e.st)
		}
	}
	p.idx.mu.Unlock()
	if p.cfg.Partitions > 1 && !p.idx.holdsDevice(id) {
		// Another instance's partition: read its records.
		for _, cid := range p.idx.campaignIDs() {
			var st DeviceState
			_, err := getJSON(ctx, p.st.campdev.of(id), "device state", devKey(cid, id), &st)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return DeviceDetail{}, err
			}
			dd.Campaigns = append(dd.Campaigns, st)
		}
	}
	sort.Slice(dd.Campaigns, func(i, j int) bool { return dd.Campaigns[i].Updated.After(dd.Campaigns[j].Updated) })
	return dd, nil
}

// Devices lists the registered devices, by id.
func (p *Publisher) Devices(ctx context.Context) ([]Device, error) {
	recs, err := p.deviceRecords(ctx)
	out := make([]Device, len(recs))
	for i := range recs {
		out[i] = recs[i].Device
	}
	return out, err
}

// deviceRecords lists the registry as stored, by id.
func (p *Publisher) deviceRecords(ctx context.Context) ([]deviceRecord, error) {
	out, err := allValues[deviceRecord](ctx, p.st.devices)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// allValues reads every value of a bucket (deleted keys left out), in key
// order.
//
// A KV watcher's "initial values done" marker alone is not a reliable end:
// twice in the fault tests (nats-server 2.9) it came before every value
// had been delivered, and a campaign then left out a registered device.
// So the bucket's last sequence is read first from the stream leader
// (its info), and the listing goes on past the marker until an entry at or
// beyond that sequence has been seen (deletes included, since a bucket's
// last message may be one), or kvOpTimeout has passed since the marker.
// That sequence is read again at the marker: a value written while the
// initial values were sent (a device's report updating its record)
// replaces one the watch then skips, and comes only as an update; without
// waiting for it a campaign left out two of ten devices of the demo.
func allValues[T any](ctx context.Context, kv jetstream.KeyValue) ([]T, error) {
	last, err := lastSeq(ctx, kv)
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("publisher: read %s: %w", kv.Bucket(), err)
	}
	defer w.Stop()
	vals := map[string][]byte{}
	var seen uint64
	var grace <-chan time.Time
	for seen < last || grace == nil {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-grace:
			seen = last // the marker came and nothing reached last: take what was read
			continue
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("publisher: read %s: the watch ended before its initial values", kv.Bucket())
			}
			if e == nil {
				if grace == nil {
					grace = time.After(kvOpTimeout)
					// A value written while the initial values were sent
					// replaced one the watch then skips; it comes as an
					// update, at or before the stream's last sequence now.
					if l, err := lastSeq(ctx, kv); err == nil {
						last = max(last, l)
					}
				}
				continue
			}
			seen = max(seen, e.Revision())
			if e.Operation() == jetstream.KeyValuePut {
				vals[e.Key()] = e.Value()
			} else {
				delete(vals, e.Key())
			}
		}
	}
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]T, 0, len(keys))
	for _, k := range keys {
		var v T
		if err := json.Unmarshal(vals[k], &v); err != nil {
			continue
		}
		out = append(out, v)
	}
	return out, nil
}

// lastSeq returns the last sequence of kv's stream, read from its leader.
func lastSeq(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	sctx, cancel := opCtx(ctx)
	st, err := kv.Status(sctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("publisher: read %s: %w", kv.Bucket(), err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		return bs.StreamInfo().State.LastSeq, nil
	}
	return 0, nil
}

// RemoveDevice deletes a device from the registry (ErrNotFound). From
// then on the registry's broker authenticator refuses it; once the delete
// is persisted, Config.OnDeviceRemoved is called so the stack can end its
// live sessions.
func (p *Publisher) RemoveDevice(ctx context.Context, who Principal, id string) error {
	if _, err := p.Device(ctx, id); err != nil {
		return err
	}
	// A delete that times out is sent again: deleting twice is deleting.
	if err := withRetry(ctx, func(ctx context.Context, _ bool) error { return p.st.devices.Delete(ctx, id) }); err != nil {
		return fmt.Errorf("publisher: remove device %q: %w", id, err)
	}
	p.audit(ctx, who, "device.remove", id, "")
	p.forgetDeviceKey(ctx, id)
	if p.cfg.OnDeviceRemoved != nil {
		p.cfg.OnDeviceRemoved(id)
	}
	return nil
}

// GroupAdd puts the devices in group g; GroupRemove takes them out. Each
// device is updated with compare-and-set. Errors: ErrInvalid, ErrNotFound
// (naming the first unknown device; earlier ones are already changed).
func (p *Publisher) GroupAdd(ctx context.Context, who Principal, g string, devices []string) error {
	return p.groupEdit(ctx, who, g, devices, true)
}

// GroupRemove takes the devices out of group g.
func (p *Publisher) GroupRemove(ctx context.Context, who Principal, g string, devices []string) error {
	return p.groupEdit(ctx, who, g, devices, false)
}

func (p *Publisher) groupEdit(ctx context.Context, who Principal, g string, devices []string, add bool) error {
	if err := checkName("group", g); err != nil {
		return err
	}
	if len(devices) == 0 {
		return fmt.Errorf("%w: no devices given", ErrInvalid)
	}
	for _, id := range devices {
		if err := checkName("device id", id); err != nil {
			return err
		}
		_, _, err := mutateJSON(ctx, p.st.devices, "device", id, func(d *deviceRecord) error {
			has := slices.Contains(d.Groups, g)
			switch {
			case add && !has:
				d.Groups = dedup(append(d.Groups, g))
			case !add && has:
				d.Groups = slices.DeleteFunc(d.Groups, func(x string) bool { return x == g })
			default:
				return errNoChange
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	action := "group.add"
	if !add {
		action = "group.remove"
	}
	p.audit(ctx, who, action, g, strings.Join(devices, ","))
	return nil
}

// CheckDeviceSecret reports whether id is a registered device whose
// secret is secret; it is what a broker auth hook asks.
func (p *Publisher) CheckDeviceSecret(ctx context.Context, id, secret string) (Device, bool, error) {
	if schemas.CheckID("device id", id) != nil || !kvSafe(id) {
		return Device{}, false, nil
	}
	d, err := p.deviceRecord(ctx, id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Device{}, false, nil
		}
		return Device{}, false, err
	}
	return d.Device, VerifySecret(d.SecretHash, secret), nil
}
