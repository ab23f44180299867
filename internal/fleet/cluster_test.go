// The clustered topology without containers: three nats-server nodes in
// one JetStream cluster (R3), a mosquitto process, two publishers and 50
// agents. Mid-campaign NATS node n0 and publisher 1 are killed: the
// campaign completes and no device restarts its download from zero.
// Reports lost in the failover are recovered by the surviving leader's
// reconcile (publisher Config.Reconcile), which the agents answer with
// their outcome.
//
// It once stalled about one run in two: a report worker of the surviving
// publisher sent a KV update whose reply was lost with the killed node and
// waited for the test's whole deadline, so the reports of every device
// hashed to that worker were never applied. Every KV request now has its
// own bound (publisher kvOpTimeout).
package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// startNATSCluster starts three in-process nats-server nodes routed into
// one JetStream cluster and returns them with their client URLs.
func startNATSCluster(t *testing.T) ([]*server.Server, []string) {
	t.Helper()
	cport := []int{testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)}
	var srvs []*server.Server
	var urls []string
	for i := range 3 {
		var routes []string
		for j, p := range cport {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
			}
		}
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
			JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "fc", Host: "127.0.0.1", Port: cport[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("node %d not ready", i)
		}
		srvs = append(srvs, s)
		urls = append(urls, s.ClientURL())
	}
	return srvs, urls
}

// TestClusteredCampaignSurvivesFailover is the compose topology without
// containers: a three-node NATS JetStream cluster (R3), a mosquitto
// process, two publishers and 50 real agents. Mid-campaign one NATS node
// is killed; the campaign completes on the survivors and no device starts
// its download again from zero.
func TestClusteredCampaignSurvivesFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	log := testLogger(t)
	srvs, urls := startNATSCluster(t)
	mq := testutil.StartMosquitto(t, "")
	topics := testutil.UniqueTopics(t)

	// Wait for the JetStream meta leader.
	probe, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	pjs, _ := jetstream.New(probe)
	for {
		actx, acancel := context.WithTimeout(ctx, time.Second)
		_, err := pjs.AccountInfo(actx)
		acancel()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("JetStream cluster never became ready: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}

	key, _ := suit.GenerateKey("es256", nil)
	signer, _ := suit.NewKeySigner(key, 0)
	vendor, class := uuidFor("vendor"), uuidFor("class")
	const adminKey = "fk-cluster-test-admin-0123456789"
	type pub struct {
		p    *publisher.Publisher
		kill func()
	}
	startPub := func(name string, first int) pub {
		order := append([]string{urls[first]}, append(append([]string{}, urls[:first]...), urls[first+1:]...)...)
		in := stacktest.StartInstance(t, stack.InstanceConfig{
			NATSURL: strings.Join(order, ","), InOrder: true, ReconnectMax: 100 * time.Millisecond,
			DeviceURLs: []string{mq.URL()}, ClientID: name, Topics: topics, Logger: log,
			Publisher: publisher.Config{
				Namespace: "fcl", Replicas: 3,
				Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: 4096,
				TickInterval: 50 * time.Millisecond, LeaseTTL: 2 * time.Second, StartWindow: -1,
				RepairWindow: 50 * time.Millisecond, WaveInterval: time.Second, BootstrapKey: adminKey, Logger: log,
				Reconcile: 2 * time.Second,
			},
		})
		// kill is a crash, not a clean stop: the broker connections drop
		// first, so the publisher can neither release its lease nor
		// unsubscribe; the survivor takes over when the lease expires.
		return pub{in.Pub, in.Crash}
	}
	pub1 := startPub("pub1", 0)
	pub2 := startPub("pub2", 1)
	who, err := pub1.p.Authenticate(ctx, adminKey)
	if err != nil {
		t.Fatal(err)
	}

	const n, size = 50, 192 << 10
	v1, v2 := Image(11, "v1", size), Image(11, "v2", size)
	var mu sync.Mutex
	downloads := map[string]int{} // fresh downloads (slot erased) per device
	fl, err := StartFleet(ctx, FleetConfig{
		Devices: n, Prefix: "cl" + randomHex(3), Class: "cluster", Dir: t.TempDir(), MQTTURL: mq.URL(), Topics: topics,
		VendorID: vendor, ClassID: class, Trust: suit.TrustAnchors{key.Public()}, Factory: v1, Logger: log,
		Register: func(ctx context.Context, id, secret string) error {
			_, _, err := pub1.p.AddDevice(ctx, who, publisher.NewDevice{ID: id, Class: "cluster", Secret: secret})
			return err
		},
		Agent: func(c *deviceagent.Config) {
			prev, id := c.OnState, c.DeviceID
			c.OnState = func(r deviceagent.Record) {
				prev(r)
				if r.State == schemas.StateDownloading && strings.HasPrefix(r.Text, "slot ") {
					mu.Lock()
					downloads[id]++
					mu.Unlock()
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	defer fl.Stop()
	_, _, err = pub1.p.UploadImage(ctx, who, "v2.bin", bytes.NewReader(v2))
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(v2)
	c, err := pub1.p.CreateCampaign(ctx, who, schemas.CampaignSpec{Image: digest[:], Class: "cluster", Phases: []uint8{20, 60, 100}, Start: true})
	if err != nil {
		t.Fatal(err)
	}

	// Mid-campaign: once the first phase is through and devices of the
	// second are downloading, kill NATS node 0 (publisher 1's server) and
	// publisher 1: publisher 2 carries on through the other nodes with the
	// state intact, and the downloads in flight resume where they were.
	for {
		st, err := pub2.p.CampaignStatus(ctx, c.ID)
		if err == nil && st.Phase >= 1 && st.Counts["downloading"] >= 3 {
			srvs[0].Shutdown()
			pub1.kill()
			t.Logf("killed NATS node n0 and publisher 1 in phase %d at %v", st.Phase, st.Counts)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("campaign never had devices downloading in its second phase: %+v, %v", st, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var st, last publisher.Status
	for {
		st, err = pub2.p.CampaignStatus(ctx, c.ID)
		if err == nil {
			last = st
			if st.State != publisher.CampaignRunning {
				break
			}
		}
		select {
		case <-ctx.Done():
			fl.Stop()
			var sum Summary
			sum.fill(fl, fl.FactoryDigest(), sha256.Sum256(v2))
			for _, id := range c.Targets {
				dd, err := pub2.p.DeviceDetail(context.Background(), id)
				if err != nil {
					t.Logf("device %s: %v", id, err)
					continue
				}
				for _, cs := range dd.Campaigns {
					if cs.Campaign == c.ID && cs.State != publisher.DevState(schemas.StateConfirmed) {
						t.Logf("device %s: publisher 2 holds %s (updated %s, progress %s, counter %d); last report %+v", id, cs.State, cs.Updated.Format("15:04:05.000"), cs.Progress.Format("15:04:05.000"), cs.Counter, dd.LastReport)
					}
				}
			}
			t.Fatalf("campaign did not end after the failover: last status %s phase %d counts %v (last error %v); devices: %d confirmed on v2, not done: %+v",
				last.State, last.Phase, last.Counts, err, sum.ConfirmedV2, sum.Problems)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if st.State != publisher.CampaignCompleted {
		t.Fatalf("campaign ended %s (%s): %v", st.State, st.Reason, st.Counts)
	}
	fl.Stop()
	var sum Summary
	sum.fill(fl, fl.FactoryDigest(), digest)
	if sum.ConfirmedV2 != n {
		t.Fatalf("%d of %d devices confirmed on v2: %+v", sum.ConfirmedV2, n, sum.Problems)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, k := range downloads {
		if k > 1 {
			t.Errorf("%s started its download from zero %d times", id, k)
		}
	}
	if len(downloads) != n {
		t.Errorf("%d devices downloaded, want %d", len(downloads), n)
	}
}
