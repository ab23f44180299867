package testutil

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// NATSRequest sends a request on nc to subj and reports whether the server
// refused it (a permission violation naming subj) and, if not, its reply
// (nil when none came within 5s). Access tests use it to tell "refused"
// from "answered" from "not answered".
func NATSRequest(t testing.TB, nc *nats.Conn, subj string, body []byte) (refused bool, reply *nats.Msg) {
	t.Helper()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subj, inbox, body); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.LastError(); err != nil && errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `Publish to "`+subj+`"`) {
		return true, nil
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		return false, nil
	}
	return false, m
}
