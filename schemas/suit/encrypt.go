package suit

import (
	"crypto/ecdh"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Firmware encryption (draft-ietf-suit-firmware-encryption-26, as libcsuit
// implements it). A payload is encrypted once with a fresh content key;
// the manifest's parameter-encryption-info (label 19) holds a
// SUIT_Encryption_Info, a COSE_Encrypt (tag 96) with a detached
// ciphertext: the content algorithm and IV, and one recipient per key the
// content key is wrapped for. directive-write decrypts parameter-content,
// directive-fetch and directive-copy decrypt what they read, into the
// component they write.
//
//	SUIT_Encryption_Info = COSE_Encrypt_Tagged
//	COSE_Encrypt_Tagged  = #6.96([
//	    protected:   bstr .cbor header_map / bstr .size 0,
//	    unprotected: header_map,          ; IV (5), alg (1) when not protected
//	    ciphertext:  null,                ; detached
//	    recipients:  [+ COSE_recipient],
//	])
//	COSE_recipient = [
//	    protected:   bstr .cbor header_map / bstr .size 0,
//	    unprotected: header_map,          ; alg, kid (4), ephemeral key (-1)
//	    ciphertext:  bstr,                ; the wrapped content key (RFC 3394)
//	]

// COSE algorithms of firmware encryption: content encryption and key
// distribution (RFC 9053, RFC 9459).
const (
	// A128GCM and A256GCM: AES-GCM with a 128-bit tag and a 12-byte IV
	// (content encryption, authenticated; for payloads small enough to be
	// held while the tag is checked, such as parameter-content).
	A128GCM Algorithm = 1
	A256GCM Algorithm = 3
	// A128CTR and A256CTR: AES-CTR with a 16-byte initial counter block
	// (RFC 9459; content encryption, not authenticated: streamed, and
	// accepted only when the plaintext matches the signed image digest).
	A128CTR Algorithm = -65534
	A256CTR Algorithm = -65532
	// A128KW and A256KW: AES key wrap (RFC 3394) with a pre-shared
	// key-encryption key.
	A128KW Algorithm = -3
	A256KW Algorithm = -5
	// ECDHESA128KW and ECDHESA256KW: ephemeral-static ECDH (P-256 or
	// X25519), HKDF-SHA256 over the COSE KDF context, then AES key wrap.
	ECDHESA128KW Algorithm = -29
	ECDHESA256KW Algorithm = -31
)

// encAlgName names the algorithms of this file (Algorithm.String knows
// the signature ones).
func encAlgName(a Algorithm) string {
	switch a {
	case A128GCM:
		return "A128GCM"
	case A256GCM:
		return "A256GCM"
	case A128CTR:
		return "A128CTR"
	case A256CTR:
		return "A256CTR"
	case A128KW:
		return "A128KW"
	case A256KW:
		return "A256KW"
	case ECDHESA128KW:
		return "ECDH-ES+A128KW"
	case ECDHESA256KW:
		return "ECDH-ES+A256KW"
	}
	return a.String()
}

// contentKeySize returns the key size of a content algorithm, 0 if unknown.
func contentKeySize(a Algorithm) int {
	switch a {
	case A128GCM, A128CTR:
		return 16
	case A256GCM, A256CTR:
		return 32
	}
	return 0
}

// kekSize returns the key-encryption key size of a key-distribution
// algorithm, 0 if unknown.
func kekSize(a Algorithm) int {
	switch a {
	case A128KW, ECDHESA128KW:
		return 16
	case A256KW, ECDHESA256KW:
		return 32
	}
	return 0
}

func isECDH(a Algorithm) bool { return a == ECDHESA128KW || a == ECDHESA256KW }

// COSE tag and limits.
const (
	tagEncrypt  = 96
	tagEncrypt0 = 16
	// MaxRecipients bounds the recipients of one SUIT_Encryption_Info
	// (each may cost the device a key agreement).
	MaxRecipients = 64
)

// EncryptionInfo is a decoded SUIT_Encryption_Info. A device acts only on
// one that a verified manifest's parameter-encryption-info holds; the
// Processor takes it from nowhere else.
type EncryptionInfo struct {
	// Alg is the content-encryption algorithm (A128GCM, A256GCM, A128CTR,
	// A256CTR).
	Alg Algorithm
	// IV is the content layer's IV (header 5): 12 bytes for GCM, the
	// 16-byte initial counter block for CTR.
	IV []byte
	// Protected is the content layer's protected header as encoded (the
	// bstr's content, maybe empty): the AAD of GCM covers it. When it holds
	// alg, that alg is Alg.
	Protected []byte
	// Recipients carry the content key wrapped for each key.
	Recipients []Recipient

	raw []byte // COSE_Encrypt_Tagged as received
}

// Recipient is one COSE_recipient: the content key wrapped for one key.
type Recipient struct {
	// Alg is the key-distribution algorithm (A128KW, A256KW,
	// ECDHESA128KW, ECDHESA256KW).
	Alg Algorithm
	// KeyID (header 4) names the recipient's key: the device's
	// key-encryption key or ECDH key. It may be empty.
	KeyID []byte
	// Protected is the recipient's protected header as encoded (maybe
	// empty); ECDH-ES binds it into the KDF context.
	Protected []byte
	// Ephemeral is the sender's ephemeral public key (header -1), for
	// ECDH-ES; nil otherwise.
	Ephemeral *ecdh.PublicKey
	// WrappedKey is the recipient's ciphertext: the AES-wrapped content
	// key (RFC 3394).
	WrappedKey []byte

	raw    []byte // COSE_recipient as received
	ephErr error  // the ephemeral key's curve is not supported
}

// DecodeEncryptionInfo decodes a SUIT_Encryption_Info: the
// COSE_Encrypt_Tagged item (the content of parameter-encryption-info's
// bstr). Decoding is strict and bounded: a wrong tag, a ciphertext that is
// not detached, a header label in both buckets, crit or partial-IV
// headers, nested recipients, a malformed ephemeral key or more than
// MaxRecipients recipients are refused (ErrMalformed, ErrUnsupported). The
// algorithms are not checked here but when the payload is decrypted
// (ErrUnknownAlgorithm), so a manifest using one still decodes for
// display.
func DecodeEncryptionInfo(b []byte) (*EncryptionInfo, error) {
	const what = "encryption-info"
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %s of %d bytes", ErrTooLarge, what, len(b))
	}
	if err := wellformed(b, what); err != nil {
		return nil, err
	}
	tag, content, ok := asTag(b)
	switch {
	case ok && tag == tagEncrypt0:
		return nil, fmt.Errorf("%w: %s: COSE_Encrypt0 (want COSE_Encrypt with recipients)", ErrUnsupported, what)
	case !ok || tag != tagEncrypt:
		return nil, fmt.Errorf("%w: %s: want COSE_Encrypt_Tagged (tag %d)", ErrMalformed, what, tagEncrypt)
	}
	it, err := items(content, what)
	if err != nil {
		return nil, err
	}
	if len(it) != 4 {
		return nil, fmt.Errorf("%w: %s: want 4 elements", ErrMalformed, what)
	}
	h, prot, err := decodeHeaders(it[0], it[1], what)
	if err != nil {
		return nil, err
	}
	if !h.hasAlg {
		return nil, fmt.Errorf("%w: %s: no alg", ErrMalformed, what)
	}
	if h.iv == nil {
		return nil, fmt.Errorf("%w: %s: no IV", ErrMalformed, what)
	}
	if h.eph != nil || h.kid != nil {
		return nil, fmt.Errorf("%w: %s: key headers in the content layer (want them in recipients)", ErrMalformed, what)
	}
	if !isNull(it[2]) {
		return nil, fmt.Errorf("%w: %s: ciphertext must be detached (null)", ErrMalformed, what)
	}
	rs, err := items(it[3], what+": recipients")
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 || len(rs) > MaxRecipients {
		return nil, fmt.Errorf("%w: %s: %d recipients (want 1 to %d)", ErrMalformed, what, len(rs), MaxRecipients)
	}
	info := &EncryptionInfo{Alg: h.alg, IV: h.iv, Protected: prot, raw: b}
	for i, rb := range rs {
		r, err := decodeRecipient(rb, fmt.Sprintf("%s: recipient %d", what, i))
		if err != nil {
			return nil, err
		}
		info.Recipients = append(info.Recipients, *r)
	}
	return info, nil
}

// DecodeRecipient decodes one COSE_recipient, as Recipient.Encode writes
// it (a per-device wrapped key delivered apart from the manifest). It
// refuses what DecodeEncryptionInfo refuses in a recipient.
func DecodeRecipient(b []byte) (*Recipient, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: recipient of %d bytes", ErrTooLarge, len(b))
	}
	if err := wellformed(b, "recipient"); err != nil {
		return nil, err
	}
	return decodeRecipient(b, "recipient")
}

func decodeRecipient(b []byte, what string) (*Recipient, error) {
	it, err := items(b, what)
	if err != nil {
		return nil, err
	}
	switch {
	case len(it) == 4:
		return nil, fmt.Errorf("%w: %s: nested recipients", ErrUnsupported, what)
	case len(it) != 3:
		return nil, fmt.Errorf("%w: %s: want 3 elements", ErrMalformed, what)
	}
	h, prot, err := decodeHeaders(it[0], it[1], what)
	if err != nil {
		return nil, err
	}
	if !h.hasAlg {
		return nil, fmt.Errorf("%w: %s: no alg", ErrMalformed, what)
	}
	if h.iv != nil {
		return nil, fmt.Errorf("%w: %s: IV in a key-wrap recipient", ErrMalformed, what)
	}
	wrapped, ok := asBytes(it[2])
	if !ok || len(wrapped) == 0 {
		return nil, fmt.Errorf("%w: %s: ciphertext (the wrapped key) not a non-empty bstr", ErrMalformed, what)
	}
	r := &Recipient{Alg: h.alg, KeyID: h.kid, Protected: prot, WrappedKey: wrapped, raw: b}
	if h.eph != nil {
		r.Ephemeral, err = decodeCOSEKey(h.eph, what+": ephemeral key")
		switch {
		case errors.Is(err, ErrUnknownAlgorithm):
			r.ephErr = err // another device's curve: refused only if used
		case err != nil:
			return nil, err
		}
	}
	if isECDH(r.Alg) && h.eph == nil {
		return nil, fmt.Errorf("%w: %s: %s without an ephemeral key", ErrMalformed, what, encAlgName(r.Alg))
	}
	return r, nil
}

// coseHeaders is what this package reads of a COSE header pair.
type coseHeaders struct {
	alg    Algorithm
	hasAlg bool
	kid    []byte
	iv     []byte
	eph    []byte // raw COSE_Key
}

// COSE header labels (RFC 9052, RFC 9053).
const (
	hdrAlg       = 1
	hdrCrit      = 2
	hdrKid       = 4
	hdrIV        = 5
	hdrPartialIV = 6
	hdrEphemeral = -1
)

// decodeHeaders reads the protected (a bstr item) and unprotected (a map
// item) headers and returns them with the protected bytes (the bstr's
// content). A label may appear in one bucket only.
func decodeHeaders(protItem, unprot []byte, what string) (coseHeaders, []byte, error) {
	var h coseHeaders
	prot, ok := asBytes(protItem)
	if !ok {
		return h, nil, fmt.Errorf("%w: %s: protected header not a bstr", ErrMalformed, what)
	}
	var all []pair
	if len(prot) > 0 {
		if err := wellformed(prot, what+": protected header"); err != nil {
			return h, nil, err
		}
		ps, err := entries(prot, what+": protected header")
		if err != nil {
			return h, nil, err
		}
		all = ps
	}
	us, err := entries(unprot, what+": unprotected header")
	if err != nil {
		return h, nil, err
	}
	for _, u := range us {
		for _, p := range all {
			if sameKey(p.k, u.k) {
				return h, nil, fmt.Errorf("%w: %s: header %s in both buckets", ErrMalformed, what, keyString(u.k))
			}
		}
	}
	all = append(all, us...)
	for _, e := range all {
		label, ok := asInt(e.k)
		if !ok {
			continue // text labels: private use, not ours
		}
		switch label {
		case hdrAlg:
			a, ok := asInt(e.v)
			if !ok {
				return h, nil, fmt.Errorf("%w: %s: alg not an int", ErrUnsupported, what)
			}
			h.alg, h.hasAlg = Algorithm(a), true
		case hdrCrit:
			return h, nil, fmt.Errorf("%w: %s: crit header parameters", ErrUnsupported, what)
		case hdrPartialIV:
			return h, nil, fmt.Errorf("%w: %s: partial IV", ErrUnsupported, what)
		case hdrKid, hdrIV:
			v, ok := asBytes(e.v)
			if !ok {
				return h, nil, fmt.Errorf("%w: %s: header %d not a bstr", ErrMalformed, what, label)
			}
			if v == nil {
				v = []byte{}
			}
			if label == hdrKid {
				h.kid = v
			} else {
				h.iv = v
			}
		case hdrEphemeral:
			h.eph = e.v
		}
	}
	return h, prot, nil
}

// COSE_Key labels and values (RFC 9053 section 7).
const (
	keyKty    = 1
	keyCrv    = -1
	keyX      = -2
	keyY      = -3
	keyD      = -4
	ktyOKP    = 1
	ktyEC2    = 2
	crvP256   = 1
	crvP384   = 2
	crvP521   = 3
	crvX25519 = 4
)

// decodeCOSEKey reads an ephemeral public key: EC2 P-256 with x and y, or
// OKP X25519 with x. Compressed points and private keys are refused.
func decodeCOSEKey(b []byte, what string) (*ecdh.PublicKey, error) {
	es, err := entries(b, what)
	if err != nil {
		return nil, err
	}
	var kty, crv int64
	var x, y []byte
	for _, e := range es {
		label, ok := asInt(e.k)
		if !ok {
			continue
		}
		switch label {
		case keyKty, keyCrv:
			v, ok := asInt(e.v)
			if !ok {
				return nil, fmt.Errorf("%w: %s: kty or crv not an int", ErrUnsupported, what)
			}
			if label == keyKty {
				kty = v
			} else {
				crv = v
			}
		case keyX, keyY:
			v, ok := asBytes(e.v)
			if !ok {
				return nil, fmt.Errorf("%w: %s: coordinate not a bstr (compressed points are not supported)", ErrUnsupported, what)
			}
			if label == keyX {
				x = v
			} else {
				y = v
			}
		case keyD:
			return nil, fmt.Errorf("%w: %s: carries a private key", ErrMalformed, what)
		}
	}
	var pub *ecdh.PublicKey
	curves := map[int64]struct {
		c  ecdh.Curve
		sz int
	}{crvP256: {ecdh.P256(), 32}, crvP384: {ecdh.P384(), 48}, crvP521: {ecdh.P521(), 66}}
	switch ec, ok := curves[crv]; {
	case kty == ktyEC2 && ok:
		if len(x) != ec.sz || len(y) != ec.sz {
			return nil, fmt.Errorf("%w: %s: coordinates must be %d bytes", ErrMalformed, what, ec.sz)
		}
		pub, err = ec.c.NewPublicKey(append(append([]byte{4}, x...), y...))
	case kty == ktyOKP && crv == crvX25519:
		if y != nil {
			return nil, fmt.Errorf("%w: %s: X25519 key with y", ErrMalformed, what)
		}
		pub, err = ecdh.X25519().NewPublicKey(x)
	default:
		return nil, fmt.Errorf("%w: %s: key type %d curve %d (want EC2 P-256, P-384, P-521 or OKP X25519)", ErrUnknownAlgorithm, what, kty, crv)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return pub, nil
}

// encodeCOSEKey writes a public key as a COSE_Key map.
func encodeCOSEKey(pub *ecdh.PublicKey) map[int64]any {
	b := pub.Bytes()
	if pub.Curve() == ecdh.X25519() {
		return map[int64]any{keyKty: ktyOKP, keyCrv: crvX25519, keyX: b}
	}
	crv := map[ecdh.Curve]int64{ecdh.P256(): crvP256, ecdh.P384(): crvP384, ecdh.P521(): crvP521}[pub.Curve()]
	n := (len(b) - 1) / 2 // uncompressed point: 0x04 || x || y
	return map[int64]any{keyKty: ktyEC2, keyCrv: crv, keyX: b[1 : 1+n], keyY: b[1+n:]}
}

// Encode returns the COSE_Encrypt_Tagged item in deterministic CBOR (as
// received, for a decoded one): the content of parameter-encryption-info's
// bstr. It encodes what it holds; DecodeEncryptionInfo refuses an
// incomplete one (no IV, no recipient).
func (e *EncryptionInfo) Encode() []byte {
	if e.raw != nil {
		return e.raw
	}
	unprot := map[int64]any{hdrIV: e.IV}
	prot := e.Protected
	if prot == nil {
		prot = []byte{}
	}
	if !headerHasAlg(prot) {
		unprot[hdrAlg] = int64(e.Alg)
	}
	rs := make([]cbor.RawMessage, len(e.Recipients))
	for i := range e.Recipients {
		rs[i] = e.Recipients[i].Encode()
	}
	return marshal(cbor.Tag{Number: tagEncrypt, Content: []any{prot, unprot, nil, rs}})
}

// Encode returns the COSE_recipient in deterministic CBOR (as received,
// for a decoded one). The algorithm goes where Protected does not hold it:
// the unprotected header.
func (r *Recipient) Encode() []byte {
	if r.raw != nil {
		return r.raw
	}
	unprot := map[int64]any{}
	prot := r.Protected
	if prot == nil {
		prot = []byte{}
	}
	if !headerHasAlg(prot) {
		unprot[hdrAlg] = int64(r.Alg)
	}
	if len(r.KeyID) > 0 {
		unprot[hdrKid] = r.KeyID
	}
	if r.Ephemeral != nil {
		unprot[hdrEphemeral] = encodeCOSEKey(r.Ephemeral)
	}
	wrapped := r.WrappedKey
	if wrapped == nil {
		wrapped = []byte{}
	}
	return marshal([]any{prot, unprot, wrapped})
}

// headerHasAlg reports whether an encoded protected header holds alg.
func headerHasAlg(prot []byte) bool {
	if len(prot) == 0 {
		return false
	}
	ps, err := entries(prot, "protected header")
	if err != nil {
		return false
	}
	for _, p := range ps {
		if k, ok := asInt(p.k); ok && k == hdrAlg {
			return true
		}
	}
	return false
}

// protectedAlg encodes a protected header holding only alg.
func protectedAlg(a Algorithm) []byte { return marshal(map[int64]any{hdrAlg: int64(a)}) }
