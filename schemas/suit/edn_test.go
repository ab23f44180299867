package suit

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// A small reader of CBOR extended diagnostic notation (RFC 8610 appendix G)
// as used by the draft's examples: comments /.../, ints, h'..', '..', "..",
// [..], {..}, <<..>>, N(..), null/true/false. It encodes the items it
// reads in the order written, so the result can be compared byte for byte
// with the signed envelope.

type ednParser struct {
	s   string
	pos int
}

func parseEDN(s string) (enc []byte, err error) {
	p := &ednParser{s: s}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("edn at %d: %v", p.pos, r)
		}
	}()
	enc = p.item()
	p.ws()
	if p.pos != len(p.s) {
		panic("trailing text")
	}
	return enc, nil
}

func (p *ednParser) ws() {
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		switch {
		case unicode.IsSpace(rune(c)):
			p.pos++
		case c == '/':
			end := strings.IndexByte(p.s[p.pos+1:], '/')
			if end < 0 {
				panic("unterminated comment")
			}
			p.pos += end + 2
		default:
			return
		}
	}
}

func (p *ednParser) peek(tok string) bool {
	p.ws()
	return strings.HasPrefix(p.s[p.pos:], tok)
}

func (p *ednParser) expect(tok string) {
	if !p.peek(tok) {
		panic("want " + tok)
	}
	p.pos += len(tok)
}

func cborHead(major byte, n uint64) []byte { return appendHead(nil, major, n) }

func (p *ednParser) item() []byte {
	p.ws()
	switch {
	case p.peek("<<"):
		p.expect("<<")
		var seq []byte
		for !p.peek(">>") {
			seq = append(seq, p.item()...)
			if p.peek(",") {
				p.expect(",")
			}
		}
		p.expect(">>")
		return append(cborHead(majBstr, uint64(len(seq))), seq...)
	case p.peek("["):
		p.expect("[")
		var body []byte
		n := 0
		for !p.peek("]") {
			body = append(body, p.item()...)
			n++
			if p.peek(",") {
				p.expect(",")
			}
		}
		p.expect("]")
		return append(cborHead(majArray, uint64(n)), body...)
	case p.peek("{"):
		p.expect("{")
		var body []byte
		n := 0
		for !p.peek("}") {
			body = append(body, p.item()...)
			p.expect(":")
			body = append(body, p.item()...)
			n++
			if p.peek(",") {
				p.expect(",")
			}
		}
		p.expect("}")
		return append(cborHead(majMap, uint64(n)), body...)
	case p.peek("h'"):
		p.expect("h'")
		end := strings.IndexByte(p.s[p.pos:], '\'')
		hx := strings.Join(strings.Fields(p.s[p.pos:p.pos+end]), "")
		p.pos += end + 1
		b, err := hex.DecodeString(hx)
		if err != nil {
			panic(err)
		}
		return append(cborHead(majBstr, uint64(len(b))), b...)
	case p.peek("'"): // 'text' is a bstr of its UTF-8 bytes
		p.expect("'")
		end := strings.IndexByte(p.s[p.pos:], '\'')
		b := p.s[p.pos : p.pos+end]
		p.pos += end + 1
		return append(cborHead(majBstr, uint64(len(b))), b...)
	case p.peek(`"`):
		start := p.pos
		p.pos++
		for p.s[p.pos] != '"' {
			if p.s[p.pos] == '\\' {
				p.pos++
			}
			p.pos++
		}
		p.pos++
		s, err := strconv.Unquote(p.s[start:p.pos])
		if err != nil {
			panic(err)
		}
		return append(cborHead(majTstr, uint64(len(s))), s...)
	case p.peek("null"), p.peek("nil"):
		if p.peek("null") {
			p.expect("null")
		} else {
			p.expect("nil")
		}
		return []byte{0xf6}
	case p.peek("true"):
		p.expect("true")
		return []byte{0xf5}
	case p.peek("false"):
		p.expect("false")
		return []byte{0xf4}
	}
	start := p.pos
	if p.s[p.pos] == '-' {
		p.pos++
	}
	for p.pos < len(p.s) && p.s[p.pos] >= '0' && p.s[p.pos] <= '9' {
		p.pos++
	}
	n, err := strconv.ParseInt(p.s[start:p.pos], 10, 64)
	if err != nil {
		panic(err)
	}
	if p.peek("(") {
		p.expect("(")
		content := p.item()
		p.expect(")")
		return append(cborHead(majTag, uint64(n)), content...)
	}
	if n < 0 {
		return cborHead(majNint, uint64(-1-n))
	}
	return cborHead(majUint, uint64(n))
}
