package main

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// parseUUID accepts 32 hex digits, with or without the RFC 4122 dashes.
func parseUUID(flag, s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return nil, fmt.Errorf("%s %q: want a UUID (32 hex digits)", flag, s)
	}
	return b, nil
}
