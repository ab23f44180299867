package suit

import "fmt"

// Text keys (SUIT_Text_Keys and SUIT_Text_Component_Keys).
const (
	TextManifestDescription = 1
	TextUpdateDescription   = 2
	TextManifestJSONSource  = 3
	TextManifestYAMLSource  = 4

	TextVendorName           = 1
	TextModelName            = 2
	TextVendorDomain         = 3
	TextModelInfo            = 4
	TextComponentDescription = 5
	TextComponentVersion     = 6
	TextVersionRequired      = 7
)

// Text is one language's entry of a SUIT_Text_Map.
type Text struct {
	// Fields holds the manifest-level texts by key (TextManifestDescription...).
	Fields map[int64]string
	// Components holds per-component texts.
	Components []ComponentText
}

// ComponentText holds the texts of one component (TextVendorName...).
type ComponentText struct {
	ID     ComponentID
	Fields map[int64]string
}

// Texts decodes the text member, by language tag ("en-US"). It returns
// (nil, nil) when the manifest has no text or it was severed and is absent.
// Unknown text keys are kept; values that are not text strings are refused.
func (m *Manifest) Texts() (map[string]Text, error) {
	if m.Text.Body == nil {
		return nil, nil
	}
	c, err := unwrap(m.Text.Body, "text")
	if err != nil {
		return nil, err
	}
	langs, err := entries(c, "text")
	if err != nil {
		return nil, err
	}
	out := make(map[string]Text, len(langs))
	for _, l := range langs {
		tag, ok := asText(l.k)
		if !ok {
			return nil, fmt.Errorf("%w: text: language key %s not a tstr", ErrMalformed, keyString(l.k))
		}
		es, err := entries(l.v, "text "+tag)
		if err != nil {
			return nil, err
		}
		txt := Text{Fields: map[int64]string{}}
		for _, e := range es {
			if k, ok := asInt(e.k); ok {
				s, ok := asText(e.v)
				if !ok {
					return nil, fmt.Errorf("%w: text %s: key %d not a tstr", ErrMalformed, tag, k)
				}
				txt.Fields[k] = s
				continue
			}
			parts, err := items(e.k, "text "+tag+" component")
			if err != nil {
				return nil, err
			}
			ct := ComponentText{Fields: map[int64]string{}}
			for _, p := range parts {
				b, ok := asBytes(p)
				if !ok {
					return nil, fmt.Errorf("%w: text %s: component identifier", ErrMalformed, tag)
				}
				ct.ID = append(ct.ID, b)
			}
			ces, err := entries(e.v, "text "+tag+" component")
			if err != nil {
				return nil, err
			}
			for _, ce := range ces {
				k, ok := asInt(ce.k)
				s, ok2 := asText(ce.v)
				if !ok || !ok2 {
					return nil, fmt.Errorf("%w: text %s component %s: key %s", ErrMalformed, tag, ct.ID, keyString(ce.k))
				}
				ct.Fields[k] = s
			}
			txt.Components = append(txt.Components, ct)
		}
		out[tag] = txt
	}
	return out, nil
}
