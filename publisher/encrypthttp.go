package publisher

import (
	"crypto/ecdh"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
)

// DeviceKeyRequest provisions or rotates a device's key for encrypted
// images: exactly one of KEK (hex, 16 bytes), Generate (the server draws
// one and answers it, once) or ECDHPublic (hex: an uncompressed P-256
// point, or 32 bytes of X25519).
type DeviceKeyRequest struct {
	KEK        string `json:"kek,omitempty"`
	Generate   bool   `json:"generate,omitempty"`
	ECDHPublic string `json:"ecdh_public,omitempty"`
}

// DeviceKeyReply is the answer to a key request: the key's description
// and, for Generate only, the new KEK in hex (shown once, for the
// device's root of trust; the server keeps it wrapped and never shows it
// again).
type DeviceKeyReply struct {
	DeviceKeyInfo
	KEK string `json:"kek,omitempty"`
}

// encryptionAPI adds the key routes: PUT /api/v1/devices/{id}/key (admin)
// and GET /api/v1/devices/{id}/key (read: the description, never the key).
func (p *Publisher) encryptionAPI(api func(pattern string, scope Scope, f apiFunc)) {
	api("PUT /api/v1/devices/{id}/key", ScopeAdmin, func(_ http.ResponseWriter, r *http.Request, who Principal) (int, any, error) {
		var req DeviceKeyRequest
		if err := decodeJSON(r, &req); err != nil {
			return 0, nil, err
		}
		rep, err := p.setDeviceKey(r, who, req)
		return 200, rep, err
	})
	api("GET /api/v1/devices/{id}/key", ScopeRead, func(_ http.ResponseWriter, r *http.Request, _ Principal) (int, any, error) {
		v, err := p.DeviceKey(r.Context(), r.PathValue("id"))
		return 200, v, err
	})
}

func (p *Publisher) setDeviceKey(r *http.Request, who Principal, req DeviceKeyRequest) (DeviceKeyReply, error) {
	ctx, dev := r.Context(), r.PathValue("id")
	n := 0
	for _, set := range []bool{req.KEK != "", req.Generate, req.ECDHPublic != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return DeviceKeyReply{}, fmt.Errorf("%w: give exactly one of kek, generate, ecdh_public", ErrInvalid)
	}
	switch {
	case req.Generate:
		kek, info, err := p.GenerateDeviceKEK(ctx, who, dev)
		return DeviceKeyReply{DeviceKeyInfo: info, KEK: hex.EncodeToString(kek)}, err
	case req.KEK != "":
		kek, err := hex.DecodeString(req.KEK)
		if err != nil {
			return DeviceKeyReply{}, fmt.Errorf("%w: kek is not hex", ErrInvalid)
		}
		info, err := p.SetDeviceKEK(ctx, who, dev, kek)
		return DeviceKeyReply{DeviceKeyInfo: info}, err
	}
	b, err := hex.DecodeString(req.ECDHPublic)
	if err != nil {
		return DeviceKeyReply{}, fmt.Errorf("%w: ecdh_public is not hex", ErrInvalid)
	}
	c := ecdh.P256()
	if len(b) == 32 {
		c = ecdh.X25519()
	}
	pub, err := c.NewPublicKey(b)
	if err != nil {
		return DeviceKeyReply{}, fmt.Errorf("%w: ecdh_public: %v", ErrInvalid, err)
	}
	info, err := p.SetDeviceECDHKey(ctx, who, dev, pub)
	return DeviceKeyReply{DeviceKeyInfo: info}, err
}

// apiUploadEncrypted is POST /api/v1/images?encrypt=true&recipients=...:
// recipients are "device:ID", "class:NAME" or "group:G", comma-separated
// or repeated.
func (p *Publisher) apiUploadEncrypted(r *http.Request, who Principal, up ImageUpload) (int, any, error) {
	rs := r.URL.Query()["recipients"]
	if len(rs) == 0 || strings.TrimSpace(strings.Join(rs, "")) == "" {
		return 0, nil, fmt.Errorf("%w: an encrypted upload names its recipients (device:ID, class:NAME or group:G)", ErrInvalid)
	}
	spec, err := ParseRecipients(rs)
	if err != nil {
		return 0, nil, err
	}
	img, err := p.UploadEncryptedImage(r.Context(), who, up, spec, r.Body)
	if err != nil {
		return 0, nil, err
	}
	return 201, img, nil
}
