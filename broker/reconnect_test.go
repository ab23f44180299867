package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// TestMQTTOnConnect restarts the broker (a mosquitto process) under a
// connected MQTT transport: its OnConnect callbacks must run once the
// connection is back, and no more once unregistered. (A device agent
// re-sends its state then; without it a report lost during an outage was
// never re-sent: see internal/faults TestOfflineDevicesBrokerStore.)
func TestMQTTOnConnect(t *testing.T) {
	mq := testutil.StartMosquitto(t, "")
	tr := testutil.Dial(t, broker.Config{URL: mq.URL(), Topics: testutil.UniqueTopics(t), ReconnectMax: 200 * time.Millisecond})
	rc, ok := tr.(interface{ OnConnect(func()) func() })
	if !ok {
		t.Fatalf("%T has no OnConnect", tr)
	}
	up := make(chan struct{}, 4)
	other := make(chan struct{}, 4)
	stop := rc.OnConnect(func() { up <- struct{}{} })
	stopOther := rc.OnConnect(func() { other <- struct{}{} })
	stopOther()
	mq.Restart()
	select {
	case <-up:
	case <-time.After(15 * time.Second):
		t.Fatal("OnConnect callback not called within 15s of the broker's restart")
	}
	select {
	case <-other:
		t.Error("an unregistered OnConnect callback was called")
	default:
	}
	stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt, err := testutil.UniqueTopics(t).Report("dev-x")
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, rt, []byte("x"), broker.PublishOptions{Family: broker.FamilyReport}); err != nil {
		t.Errorf("publish after reconnection: %v", err)
	}
}
