package schemas

import (
	"fmt"
)

// Message is implemented by every wire message type of this package.
type Message interface {
	// MessageName names the message type in errors ("chunk", "report", ...).
	MessageName() string
	// MaxSize is the cap on the encoded size of this message type.
	MaxSize() int
	// Validate checks the contract beyond CBOR types. It does not check V.
	Validate() error
}

// Encode validates m, stamps no fields, and encodes it deterministically.
// It fails with ErrInvalid when m breaks the contract and ErrTooLarge when
// the encoding exceeds the type's cap.
func Encode(m Message) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := encMode.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, m.MessageName(), err)
	}
	if len(b) > m.MaxSize() {
		return nil, fmt.Errorf("%w: %s is %d bytes, cap %d", ErrTooLarge, m.MessageName(), len(b), m.MaxSize())
	}
	return b, nil
}

// Decode decodes data into m with the strict decoder, checks the size cap
// before decoding, then the version, then Validate. Errors wrap
// ErrTooLarge, ErrMalformed, ErrVersion or ErrInvalid and name the message.
func Decode(data []byte, m Message) error {
	if len(data) > m.MaxSize() {
		return fmt.Errorf("%w: %s is %d bytes, cap %d", ErrTooLarge, m.MessageName(), len(data), m.MaxSize())
	}
	if err := decMode.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, m.MessageName(), err)
	}
	if v := version(m); v != Version {
		return fmt.Errorf("%w: %s version %d, want %d", ErrVersion, m.MessageName(), v, Version)
	}
	return m.Validate()
}

func version(m Message) uint {
	switch x := m.(type) {
	case *UpdateNotice:
		return x.V
	case *ChunkRequest:
		return x.V
	case *Chunk:
		return x.V
	case *ChunkTable:
		return x.V
	case *DeviceReport:
		return x.V
	case *CampaignCommand:
		return x.V
	case *CampaignReply:
		return x.V
	}
	return 0
}
