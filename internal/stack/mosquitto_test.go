package stack_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
)

// TestMosquittoPasswdFollowsRegistry (issue 12 item 11): with an external
// mosquitto whose password file the stack keeps (Config.MosquittoPasswd,
// SIGHUP through a pid file), removing a device through the publisher
// drops its live session on mosquitto and its reconnection is refused,
// another device stays connected, and a device added afterwards can
// connect. The mosquitto process is the test's own, configured with the
// files `firmcast broker mosquitto-config` writes.
func TestMosquittoPasswdFollowsRegistry(t *testing.T) {
	topics := testutil.UniqueTopics(t)
	backend := broker.Account{Identity: broker.Identity{Username: "fc-backend-1", Role: broker.RoleBackend}, Secret: "backend-secret-0123456789abcdef"}
	dir := t.TempDir()
	conf, err := brokerproc.MosquittoPolicyConf(dir, topics, []broker.Account{backend})
	if err != nil {
		t.Fatal(err)
	}
	mq := testutil.StartMosquitto(t, conf)
	pidFile := filepath.Join(t.TempDir(), "mosquitto.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(mq.PID())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	passwd := filepath.Join(dir, "passwd")
	st := stacktest.Start(t, stack.Config{Topics: topics, MQTTURL: mq.URL(), Accounts: []broker.Account{backend},
		MosquittoPasswd: passwd, MosquittoPIDFile: pidFile, MosquittoReloadGap: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	add := func(id string) string {
		t.Helper()
		_, secret, err := st.Pub.AddDevice(ctx, st.Admin, publisher.NewDevice{ID: id, Class: "c"})
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	connect := func(id, secret string) (*testutil.RawMQTT, error) {
		return testutil.ConnectRawMQTT(t, mq.URL(), nil, &paho.Connect{ClientID: id, Username: id, Password: []byte(secret)})
	}
	// connectSoon waits for the reload that follows a registration: the
	// device is refused until mosquitto has read the new file.
	connectSoon := func(id, secret string) *testutil.RawMQTT {
		t.Helper()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			c, err := connect(id, secret)
			if err == nil {
				return c
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("%s never connected to mosquitto after its registration: %v", id, err)
			}
		}
	}
	report := func(id string) string {
		r, err := topics.Report(id)
		if err != nil {
			t.Fatal(err)
		}
		return r.MQTT
	}

	secrets := map[string]string{"dev-gone": add("dev-gone"), "dev-stays": add("dev-stays")}
	gone := connectSoon("dev-gone", secrets["dev-gone"])
	stays := connectSoon("dev-stays", secrets["dev-stays"])
	if err := gone.Alive(report("dev-gone")); err != nil {
		t.Fatalf("dev-gone's session: %v", err)
	}

	if err := st.Pub.RemoveDevice(ctx, st.Admin, "dev-gone"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone.Lost():
	case <-time.After(20 * time.Second):
		t.Fatal("the removed device's mosquitto session is still open")
	}
	if _, err := connect("dev-gone", secrets["dev-gone"]); err == nil {
		t.Error("mosquitto accepted the removed device again")
	}
	if err := stays.Alive(report("dev-stays")); err != nil {
		t.Errorf("another device's session after the removal: %v", err)
	}
	b, err := os.ReadFile(passwd)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "fc-backend-1:$7$") || strings.Contains(string(b), "dev-gone:") || !strings.Contains(string(b), "\ndev-stays:$7$") {
		t.Errorf("password file after the removal:\n%s", b)
	}

	late := connectSoon("dev-late", add("dev-late"))
	if err := late.Alive(report("dev-late")); err != nil {
		t.Errorf("the device added later: %v", err)
	}
	if err := stays.Alive(report("dev-stays")); err != nil {
		t.Errorf("another device's session after the addition: %v", err)
	}
}
