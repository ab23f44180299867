package publisher

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// Encrypted images (issue 17 items 2, 3, 5; docs/SECURITY.md, "Firmware
// encryption").
//
// Key custody. Config.KeyCustody is the publisher's own AES key (16 or 32
// bytes, from a key file; an HSM in production). It never leaves the
// process and wraps (RFC 3394) everything secret the publisher stores:
//
//   - each device's key-encryption key (KEK), provisioned with
//     SetDeviceKEK or GenerateDeviceKEK, kept in the devkeys bucket as a
//     COSE_recipient wrapped with the custody key (an ECDH device key is
//     a public key, SetDeviceECDHKey, and needs no wrapping);
//   - each encrypted image's content key, as the escrow recipient of its
//     signed manifest (suit.ImageEncryption), so the key travels with the
//     image and the publisher can wrap it for any device later.
//
// No API returns a device key: Device, Devices, GET /devices never carry
// one, and the devkeys bucket is read only to wrap a content key.
//
// One ciphertext, per-device keys. UploadEncryptedImage encrypts the
// image once, with a fresh AES-128-CTR content key and initial counter
// block (crypto/rand), and stores only the ciphertext, named by its
// SHA-256, with the ciphertext's chunk table. Every notice of a campaign
// of that image carries the content key wrapped for that device's own KEK
// (A128KW) or ECDH public key (ECDH-ES+A128KW), signed with the notice
// (schemas.UpdateNotice.Key); a device that is not a recipient of the
// image gets no notice and is refused as a campaign target.

// EscrowKeyID is the key id of the escrow recipient (the content key
// wrapped with Config.KeyCustody) in an encrypted image's manifest.
const EscrowKeyID = "firmcast-escrow"

// DeviceKeyInfo describes a device's key for encrypted images without
// the key: what the API may show.
type DeviceKeyInfo struct {
	Device string `json:"device"`
	// Kind is "kek" (a pre-shared AES key-encryption key) or "ecdh" (the
	// device's static ECDH public key, P-256 or X25519).
	Kind string `json:"kind"`
	// KeyID names the key in recipients: "<device>#<generation>".
	KeyID string `json:"kid"`
	// Generation counts the device's keys: a rotation adds one.
	Generation int       `json:"generation"`
	Updated    time.Time `json:"updated"`
}

// deviceKeyRecord is the stored device key: the info, and the key
// wrapped with the custody key (kek) or the public key (ecdh).
type deviceKeyRecord struct {
	DeviceKeyInfo
	Wrapped []byte `json:"wrapped,omitempty"`
	Curve   string `json:"curve,omitempty"`
	Public  []byte `json:"public,omitempty"`
}

// imageKeyRecord is what the publisher keeps of an encrypted image:
// its encryption parameter (IV, escrow-wrapped content key, wrapped
// plaintext digest) and the devices it may be sent to.
type imageKeyRecord struct {
	Encryption []byte   `json:"encryption"`
	Recipients []string `json:"recipients"`
}

func devKeyName(device string) string { return "dev." + device }
func imgKeyName(digest string) string { return "img." + digest }

// custody returns the custody key as a KEK, or ErrNoSigner when none is
// configured.
func (p *Publisher) custody() (suit.KEK, error) {
	if len(p.cfg.KeyCustody) == 0 {
		return suit.KEK{}, fmt.Errorf("%w: encrypted images need a key-custody key (Config.KeyCustody, firmcast serve --key-custody-file)", ErrNoSigner)
	}
	return suit.KEK{KeyID: []byte(EscrowKeyID), Key: p.cfg.KeyCustody}, nil
}

// SetDeviceKEK provisions (or rotates) a registered device's AES
// key-encryption key, 16 bytes (A128KW). It is stored wrapped with the
// custody key and never returned. The new key's generation is one more
// than the last; encrypted images uploaded before keep working for the
// device only if it still holds the old key too (a suit.Keyring).
// Errors: ErrNotFound (device), ErrInvalid (key size), ErrNoSigner.
func (p *Publisher) SetDeviceKEK(ctx context.Context, who Principal, device string, kek []byte) (DeviceKeyInfo, error) {
	if len(kek) != 16 {
		return DeviceKeyInfo{}, fmt.Errorf("%w: a device KEK is 16 bytes (A128KW), got %d", ErrInvalid, len(kek))
	}
	cust, err := p.custody()
	if err != nil {
		return DeviceKeyInfo{}, err
	}
	r, err := cust.WrapKey(kek, nil)
	if err != nil {
		return DeviceKeyInfo{}, fmt.Errorf("publisher: wrap device KEK: %w", err)
	}
	return p.putDeviceKey(ctx, who, device, deviceKeyRecord{DeviceKeyInfo: DeviceKeyInfo{Kind: "kek"}, Wrapped: r.Encode()})
}

// GenerateDeviceKEK draws a fresh KEK for device, stores it as
// SetDeviceKEK does and returns it: the one time it is shown, for the
// device's root of trust.
func (p *Publisher) GenerateDeviceKEK(ctx context.Context, who Principal, device string) ([]byte, DeviceKeyInfo, error) {
	kek := make([]byte, 16)
	if _, err := rand.Read(kek); err != nil {
		return nil, DeviceKeyInfo{}, err
	}
	info, err := p.SetDeviceKEK(ctx, who, device, kek)
	if err != nil {
		return nil, DeviceKeyInfo{}, err
	}
	return kek, info, nil
}

// SetDeviceECDHKey provisions (or rotates) a registered device's static
// ECDH public key (P-256 or X25519): content keys are then wrapped for it
// with ECDH-ES+A128KW, and the private key never leaves the device.
func (p *Publisher) SetDeviceECDHKey(ctx context.Context, who Principal, device string, pub *ecdh.PublicKey) (DeviceKeyInfo, error) {
	var curve string
	switch pub.Curve() {
	case ecdh.P256():
		curve = "P-256"
	case ecdh.X25519():
		curve = "X25519"
	default:
		return DeviceKeyInfo{}, fmt.Errorf("%w: device ECDH key: want P-256 or X25519", ErrInvalid)
	}
	return p.putDeviceKey(ctx, who, device, deviceKeyRecord{DeviceKeyInfo: DeviceKeyInfo{Kind: "ecdh"}, Curve: curve, Public: pub.Bytes()})
}

func (p *Publisher) putDeviceKey(ctx context.Context, who Principal, device string, rec deviceKeyRecord) (DeviceKeyInfo, error) {
	if _, err := p.Device(ctx, device); err != nil {
		return DeviceKeyInfo{}, err
	}
	var old deviceKeyRecord
	rev, err := getJSON(ctx, p.st.cryptKeys, "device key", devKeyName(device), &old)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return DeviceKeyInfo{}, err
	}
	rec.Device, rec.Generation, rec.Updated = device, old.Generation+1, p.cfg.Clock.Now().UTC()
	rec.KeyID = device + "#" + strconv.Itoa(rec.Generation)
	if rev == 0 {
		_, err = createJSON(ctx, p.st.cryptKeys, "device key", devKeyName(device), rec)
	} else {
		_, err = updateJSON(ctx, p.st.cryptKeys, "device key", devKeyName(device), rec, rev)
	}
	if err != nil {
		return DeviceKeyInfo{}, err
	}
	p.audit(ctx, who, "device.key", device, fmt.Sprintf("kind=%s kid=%s", rec.Kind, rec.KeyID))
	return rec.DeviceKeyInfo, nil
}

// DeviceKey returns what may be shown of a device's key (never the key).
func (p *Publisher) DeviceKey(ctx context.Context, device string) (DeviceKeyInfo, error) {
	var rec deviceKeyRecord
	_, err := getJSON(ctx, p.st.cryptKeys, "device key", devKeyName(device), &rec)
	return rec.DeviceKeyInfo, err
}

// wrapper returns the KeyWrapper of a device's current key.
func (p *Publisher) wrapper(ctx context.Context, device string) (suit.KeyWrapper, error) {
	var rec deviceKeyRecord
	if _, err := getJSON(ctx, p.st.cryptKeys, "device key", devKeyName(device), &rec); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: device %q has no key for encrypted images (firmcast device key)", ErrInvalid, device)
		}
		return nil, err
	}
	kid := []byte(rec.KeyID)
	switch rec.Kind {
	case "kek":
		cust, err := p.custody()
		if err != nil {
			return nil, err
		}
		r, err := suit.DecodeRecipient(rec.Wrapped)
		if err != nil {
			return nil, fmt.Errorf("publisher: stored key of %s: %w", device, err)
		}
		kek, err := cust.UnwrapKey(ctx, r, 16)
		if err != nil {
			return nil, fmt.Errorf("publisher: stored key of %s does not unwrap with the custody key: %w", device, err)
		}
		return suit.KEK{KeyID: kid, Key: kek}, nil
	case "ecdh":
		c := ecdh.P256()
		if rec.Curve == "X25519" {
			c = ecdh.X25519()
		}
		pub, err := c.NewPublicKey(rec.Public)
		if err != nil {
			return nil, fmt.Errorf("publisher: stored key of %s: %w", device, err)
		}
		return suit.ECDHPublicKey{KeyID: kid, Key: pub}, nil
	}
	return nil, fmt.Errorf("publisher: stored key of %s has unknown kind %q", device, rec.Kind)
}

// ParseRecipients turns `--recipients` values ("device:ID", "class:NAME",
// "group:G", several comma-separated) into a campaign-style target spec.
func ParseRecipients(specs []string) (schemas.CampaignSpec, error) {
	var spec schemas.CampaignSpec
	for _, s := range specs {
		for _, one := range strings.Split(s, ",") {
			kind, name, ok := strings.Cut(strings.TrimSpace(one), ":")
			switch {
			case !ok || name == "":
				return spec, fmt.Errorf("%w: recipient %q: want device:ID, class:NAME or group:G", ErrInvalid, one)
			case kind == "device":
				spec.Devices = append(spec.Devices, name)
			case kind == "group":
				spec.Groups = append(spec.Groups, name)
			case kind == "class" && (spec.Class == "" || spec.Class == name):
				spec.Class = name
			case kind == "class":
				return spec, fmt.Errorf("%w: recipients name two classes (%s, %s)", ErrInvalid, spec.Class, name)
			default:
				return spec, fmt.Errorf("%w: recipient %q: unknown kind %q", ErrInvalid, one, kind)
			}
		}
	}
	return spec, nil
}

// UploadEncryptedImage stores the image read from r encrypted: one fresh
// AES-128-CTR content key and IV, the ciphertext spooled, chunked and
// stored under its own SHA-256 (the image's name everywhere), and the
// content key kept only wrapped (escrow recipient, signed into the
// manifests). The plaintext is read once and kept nowhere; its SHA-256
// is kept only wrapped with a key derived from the content key (signed
// into manifests, suit.ImageEncryption). recipients selects the devices (see ParseRecipients),
// each of which must have a key (SetDeviceKEK, SetDeviceECDHKey).
// Every upload makes a new image, even of the same bytes. Errors:
// ErrNoSigner (no custody key), ErrInvalid, ErrTooLarge.
func (p *Publisher) UploadEncryptedImage(ctx context.Context, who Principal, up ImageUpload, recipients schemas.CampaignSpec, r io.Reader) (Image, error) {
	version, err := up.check()
	if err != nil {
		return Image{}, err
	}
	cust, err := p.custody()
	if err != nil {
		return Image{}, err
	}
	devs, err := p.recipients(ctx, recipients)
	if err != nil {
		return Image{}, fmt.Errorf("recipients: %w", err)
	}
	for _, d := range devs {
		if _, err := p.wrapper(ctx, d); err != nil {
			return Image{}, err
		}
	}
	cc, err := suit.NewContentCipher(suit.A128CTR, nil) // fresh key and IV, crypto/rand
	if err != nil {
		return Image{}, err
	}
	// The plaintext's SHA-256 exists only in memory, until it is wrapped
	// with the content key's digest key.
	ph := sha256.New()
	ct, err := cc.NewReader(io.TeeReader(r, ph), 0)
	if err != nil {
		return Image{}, err
	}
	sp, err := p.spool(bufio.NewReaderSize(ct, 64<<10), p.cfg.ChunkSize)
	if err != nil {
		return Image{}, err
	}
	defer sp.close()
	esc, err := cc.WrapFor(cust, nil)
	if err != nil {
		return Image{}, fmt.Errorf("publisher: escrow content key: %w", err)
	}
	wd, err := cc.SealDigest(ph.Sum(nil))
	if err != nil {
		return Image{}, err
	}
	enc := &suit.ImageEncryption{Info: cc.Info(*esc), PlaintextDigest: wd}
	digest := hex.EncodeToString(sp.table.Image)
	if _, err := createJSON(ctx, p.st.cryptKeys, "image key", imgKeyName(digest), imageKeyRecord{Encryption: enc.Encode(), Recipients: devs}); err != nil {
		return Image{}, err
	}
	tsum, err := p.storeSpooled(ctx, sp)
	if err != nil {
		return Image{}, err
	}
	img := Image{
		Digest: digest, Size: int64(sp.table.ImageSize), ChunkSize: p.cfg.ChunkSize, Chunks: len(sp.table.Hashes),
		TableDigest: tsum, Name: up.Name, Version: version, SecurityVersion: up.SecurityVersion,
		Uploaded: p.cfg.Clock.Now().UTC(), UploadedBy: who.Name, Encrypted: true,
	}
	// Commit point: the metadata makes the image visible.
	if _, err := createJSON(ctx, p.st.imageMeta, "image", digest, img); err != nil {
		return Image{}, err
	}
	p.audit(ctx, who, "image.upload", digest, fmt.Sprintf("name=%s version=%s security_version=%d encrypted recipients=%d", up.Name, version, up.SecurityVersion, len(devs)))
	return img, nil
}

// imageKey returns an encrypted image's record (ErrNotFound for an image
// that is not encrypted).
func (p *Publisher) imageKey(ctx context.Context, digest string) (imageKeyRecord, *suit.ImageEncryption, error) {
	var rec imageKeyRecord
	if _, err := getJSON(ctx, p.st.cryptKeys, "image key", imgKeyName(digest), &rec); err != nil {
		return rec, nil, err
	}
	raw, err := suit.DecodeImageEncryption(rec.Encryption)
	if err != nil {
		return rec, nil, fmt.Errorf("publisher: stored encryption of %s: %w", digest, err)
	}
	return rec, raw, nil
}

// encryptionFor returns the encryption parameter to sign into a manifest
// of img, nil for a plain image, after checking that every target is one
// of its recipients.
func (p *Publisher) encryptionFor(ctx context.Context, img Image, targets []string) (*suit.ImageEncryption, error) {
	if !img.Encrypted {
		return nil, nil
	}
	rec, enc, err := p.imageKey(ctx, img.Digest)
	if err != nil {
		return nil, err
	}
	var not []string
	for _, t := range targets {
		if p.recipientOf(ctx, rec, t, img.Digest) != nil {
			not = append(not, t)
		}
	}
	if len(not) > 0 {
		return nil, fmt.Errorf("%w: encrypted image %s is not encrypted for %d target(s): %s", ErrInvalid, img.Digest, len(not), summarize(not, 3))
	}
	return enc, nil
}

// wrappedKeyFor returns the content key of campaign c's image wrapped for
// device (an encoded COSE_recipient for its notice), nil for a plain
// image.
func (p *Publisher) wrappedKeyFor(ctx context.Context, c *Campaign, device string) ([]byte, error) {
	if !c.Encrypted {
		return nil, nil
	}
	k, err := p.contentKey(ctx, c.Image)
	if err != nil {
		return nil, err
	}
	if err := p.recipientOf(ctx, k.rec, device, c.Image); err != nil {
		return nil, err
	}
	w, err := p.wrapper(ctx, device)
	if err != nil {
		return nil, err
	}
	r, err := k.cc.WrapFor(w, nil)
	if err != nil {
		return nil, fmt.Errorf("publisher: wrap content key for %s: %w", device, err)
	}
	return r.Encode(), nil
}

// checkEncryptedEnvelope refuses an envelope that does not match the
// image's encryption: an encrypted image's manifest must carry the
// encryption parameter (else devices would install ciphertext), a plain
// image's must not.
func checkEncryptedEnvelope(env []byte, img Image) error {
	m, err := suit.Decode(env)
	if err != nil {
		return fmt.Errorf("%w: envelope: %v", ErrInvalid, err)
	}
	_, has, err := m.ImageEncryption()
	switch {
	case err != nil:
		return fmt.Errorf("%w: envelope: %v", ErrInvalid, err)
	case img.Encrypted && !has:
		return fmt.Errorf("%w: image %s is encrypted and the envelope carries no encryption parameter", ErrInvalid, img.Digest)
	case !img.Encrypted && has:
		return fmt.Errorf("%w: image %s is not encrypted and the envelope carries an encryption parameter", ErrInvalid, img.Digest)
	}
	return nil
}

// recipientOf checks that device is a recipient of the encrypted image
// digest: named at upload, and registered before it (a device removed and
// added again under the same id is another device, and gets none of the
// images uploaded for the old one).
func (p *Publisher) recipientOf(ctx context.Context, rec imageKeyRecord, device, digest string) error {
	if !slices.Contains(rec.Recipients, device) {
		return fmt.Errorf("%w: device %s is not a recipient of encrypted image %s", ErrInvalid, device, digest)
	}
	d, err := p.Device(ctx, device)
	if err != nil {
		return err
	}
	img, err := p.loadImage(ctx, digest)
	if err != nil {
		return err
	}
	if d.Created.After(img.info.Uploaded) {
		return fmt.Errorf("%w: device %s was registered after encrypted image %s was uploaded for a device of that id", ErrInvalid, device, digest)
	}
	return nil
}

// forgetDeviceKey deletes a removed device's key (best effort: a key left
// behind is unusable, see recipientOf, and replaced when the id is
// provisioned again).
func (p *Publisher) forgetDeviceKey(ctx context.Context, device string) {
	err := withRetry(ctx, func(ctx context.Context, _ bool) error {
		err := p.st.cryptKeys.Delete(ctx, devKeyName(device))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		p.log.Warn("remove device key", "device", device, "err", err)
	}
}

// recipients resolves an upload's recipients to device ids: devices named
// one by one are read one by one; classes and groups are expanded from
// the registry's listing, as a campaign's targets are.
func (p *Publisher) recipients(ctx context.Context, spec schemas.CampaignSpec) ([]string, error) {
	if spec.Class != "" || len(spec.Groups) > 0 || len(spec.Tags) > 0 || spec.OnVersion != nil {
		return p.expandTargets(ctx, &spec)
	}
	if len(spec.Devices) == 0 {
		return nil, fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	if len(spec.Devices) > MaxTargets {
		return nil, fmt.Errorf("%w: %d recipients, max %d", ErrInvalid, len(spec.Devices), MaxTargets)
	}
	out := slices.Clone(spec.Devices)
	slices.Sort(out)
	out = slices.Compact(out)
	for _, id := range out {
		if err := checkName("device id", id); err != nil {
			return nil, err
		}
		if _, err := p.Device(ctx, id); err != nil {
			return nil, fmt.Errorf("recipient %q: %w", id, err)
		}
	}
	return out, nil
}
