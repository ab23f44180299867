package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestDialServerList dials a NATS server list whose first server is down:
// the client moves on to the next server of the list.
func TestDialServerList(t *testing.T) {
	srv := testutil.StartNATS(t, broker.NATSServerConfig{})
	dead := fmt.Sprintf("nats://127.0.0.1:%d", testutil.FreePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := broker.Dial(ctx, broker.Config{URL: dead + "," + srv.URL(), Topics: testutil.UniqueTopics(t)})
	if err != nil {
		t.Fatalf("dial %s,%s: %v", dead, srv.URL(), err)
	}
	if err := tr.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
