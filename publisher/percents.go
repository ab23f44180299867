package publisher

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
)

// Percents are a campaign's cumulative phase percentages. In JSON they
// are an array of numbers ([10,50,100]); a plain []uint8 would be a
// base64 string, which is what servers before the console sent, and is
// still read.
type Percents []uint8

// MarshalJSON writes the percentages as an array of numbers.
func (p Percents) MarshalJSON() ([]byte, error) {
	b := []byte{'['}
	for i, v := range p {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(v), 10)
	}
	return append(b, ']'), nil
}

// UnmarshalJSON reads an array of numbers 0..255, or a base64 string.
func (p *Percents) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		v, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("phases: %w", err)
		}
		*p = v
		return nil
	}
	var ns []int
	if err := json.Unmarshal(b, &ns); err != nil {
		return fmt.Errorf("phases: %w", err)
	}
	out := make(Percents, len(ns))
	for i, n := range ns {
		if n < 0 || n > 255 {
			return fmt.Errorf("phases: %d out of range", n)
		}
		out[i] = uint8(n)
	}
	*p = out
	return nil
}
