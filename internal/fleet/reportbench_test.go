// BenchmarkReportIngestCluster measures the report path with 1, 2 and 3
// publisher instances against a three-node JetStream cluster (R3), in
// one run (issue 19, item 3). Every part runs in its own process, so its
// CPU is its own: the cluster (three embedded nats-server nodes) in one
// child, each publisher instance in one child, the report generator in
// this process.
//
//	nice -n 19 go test -run '^$' -bench ReportIngestCluster -benchtime 8x ./internal/fleet/
//
// -benchtime Nx is the number of reports per device (the last one
// "confirmed", the others "downloading" progress); FIRMCAST_BENCH_DEVICES
// (default 200) is the number of devices. The devices report over NATS
// (the instances share the report subject through a queue group). The
// generator is closed-loop: a device sends its next report once the
// previous one is in the per-device state bucket (a KV watch), as a real
// device reports its next progress after the last; so no report is
// superseded in a worker's batch and each one is one compare-and-set
// write. With D devices there are D reports in flight.
//
// Instances are added one by one and kept: the sub-benchmark instances=k
// runs on the first k. Each sub-benchmark is a fresh campaign (a fresh
// image) over the same devices, with every device notified before the
// clock starts. It reports reports/s and CPU milliseconds per 1000
// reports for each instance (inst0 ... holds the leader lease: it
// created the campaign), the cluster and the generator. Its peer, in the
// same sub-benchmark just before the reports: raw compare-and-set KV
// updates of a 252-byte value (a device record's size) into a scratch R3
// bucket by this process, as many at once as there are devices, each
// key updated as many times as a device reports (raw-updates/s, and the
// ratio reports/s / raw-updates/s), with the cluster's CPU per 1000 of
// them (raw-cluster-cpu-ms/1k).
package fleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

const (
	rbChildEnv = "FIRMCAST_REPORTBENCH_CHILD" // "cluster" or "instance"
	rbURLsEnv  = "FIRMCAST_REPORTBENCH_URLS"
	rbRootEnv  = "FIRMCAST_REPORTBENCH_ROOT"
	rbNameEnv  = "FIRMCAST_REPORTBENCH_NAME"
	// rbProfileEnv, set for the benchmark, names a directory where each
	// instance writes a CPU profile (<name>.pprof).
	rbProfileEnv = "FIRMCAST_BENCH_PROFILE"
	rbNSEnv      = "FIRMCAST_REPORTBENCH_NS"
	rbPartsEnv   = "FIRMCAST_REPORTBENCH_PARTITIONS"
	rbNS         = "frb"
	rbAdminKey   = "fk-reportbench-admin-0123456789ab"
	rbClass      = "rbench"
)

// rbChild is a child process of the benchmark: this test binary again,
// running TestReportBenchChild.
type rbChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	// stop closes the child's stdin (it ends) and waits for it.
	stop func()
}

func startRBChild(tb testing.TB, env ...string) *rbChild {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestReportBenchChild$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), env...)
	log, err := os.Create(filepath.Join(tb.TempDir(), "child.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = log
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c := &rbChild{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	c.stop = sync.OnceFunc(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		log.Close()
	})
	tb.Cleanup(c.stop)
	return c
}

// line returns the child's next output line starting with prefix (the
// test framework's own lines are skipped), without the prefix.
func (c *rbChild) line(tb testing.TB, prefix string) string {
	tb.Helper()
	for c.out.Scan() {
		if s, ok := strings.CutPrefix(c.out.Text(), prefix); ok {
			return s
		}
	}
	tb.Fatalf("child %d ended before %q (see its log): %v", c.cmd.Process.Pid, prefix, c.out.Err())
	return ""
}

// cpu returns the child's user+system CPU time so far (/proc/<pid>/stat).
func (c *rbChild) cpu(tb testing.TB) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseUint(f[11], 10, 64)       // field 14 of stat
	st, _ := strconv.ParseUint(f[12], 10, 64)       // field 15
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestReportBenchChild is a child process of BenchmarkReportIngestCluster; it
// skips unless started as one. It runs until its stdin closes.
func TestReportBenchChild(t *testing.T) {
	switch os.Getenv(rbChildEnv) {
	case "cluster":
		_, urls := startNATSCluster(t)
		waitJetStream(t, urls)
		fmt.Printf("urls %s\n", strings.Join(urls, ","))
		io.Copy(io.Discard, os.Stdin)
	case "instance":
		rbInstance(t)
	default:
		t.Skip("a child of BenchmarkReportIngestCluster")
	}
}

// waitJetStream waits for the cluster's JetStream meta leader.
func waitJetStream(t testing.TB, urls []string) {
	t.Helper()
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster never became ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with no event to wait on
	}
}

// rbConfig is the publisher configuration of the benchmark's instances:
// no broadcast waves, no re-notices, no start window, every target
// notified at once.
func rbConfig(signer suit.Signer, parts int) publisher.Config {
	return publisher.Config{
		Namespace: os.Getenv(rbNSEnv), Partitions: parts, Replicas: 3,
		Signer: publisher.SUITSigner(signer), VendorID: uuidFor("vendor"), ClassID: uuidFor("class"), ChunkSize: 4096,
		TickInterval: 100 * time.Millisecond, LeaseTTL: 5 * time.Second, StartWindow: -1,
		MaxDownloading: 1 << 20, BroadcastMin: 1 << 30, Reconcile: time.Hour, BootstrapKey: rbAdminKey,
	}
}

// rbInstance runs one publisher instance. Commands on stdin:
// "campaign <devices> <round>" registers the devices rb-0 ... (once),
// uploads a fresh image and starts a one-phase campaign to them; it
// answers "campaign <id>".
func rbInstance(t *testing.T) {
	urls := os.Getenv(rbURLsEnv)
	parts, err := strconv.Atoi(os.Getenv(rbPartsEnv))
	if err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv(rbProfileEnv); dir != "" {
		// A CPU profile of the instance's life, for where its CPU per
		// report goes.
		f, err := os.Create(filepath.Join(dir, os.Getenv(rbNameEnv)+".pprof"))
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	key, _ := suit.GenerateKey("es256", nil)
	signer, _ := suit.NewKeySigner(key, 0)
	in := stacktest.StartInstance(t, stack.InstanceConfig{
		NATSURL: urls, ClientID: os.Getenv(rbNameEnv), Topics: schemas.MustTopics(os.Getenv(rbRootEnv)),
		ReconnectMax: 100 * time.Millisecond, Logger: testLogger(t), Publisher: rbConfig(signer, parts),
	})
	fmt.Println("ready")
	ctx := context.Background()
	registered := false
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var n, round int
		if _, err := fmt.Sscanf(sc.Text(), "campaign %d %d", &n, &round); err != nil {
			t.Fatalf("command %q: %v", sc.Text(), err)
		}
		if !registered {
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < n; i += 4 {
						_, _, err := in.Pub.AddDevice(ctx, in.Admin, publisher.NewDevice{ID: fmt.Sprintf("rb-%d", i), Class: rbClass})
						if err != nil && !strings.Contains(err.Error(), "exists") {
							errs <- err
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			registered = true
		}
		img := Image(uint64(100+round), fmt.Sprintf("r%d", round), 8<<10)
		im, _, err := in.Pub.UploadImage(ctx, in.Admin, fmt.Sprintf("r%d.bin", round), bytes.NewReader(img))
		if err != nil {
			t.Fatal(err)
		}
		digest, _ := hex.DecodeString(im.Digest)
		c, err := in.Pub.CreateCampaign(ctx, in.Admin, schemas.CampaignSpec{Image: digest, Class: rbClass, Phases: []uint8{100}, Start: true})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("campaign %s\n", c.ID)
	}
}

func BenchmarkReportIngestCluster(b *testing.B) {
	devices := 200
	if s := os.Getenv("FIRMCAST_BENCH_DEVICES"); s != "" {
		devices, _ = strconv.Atoi(s)
	}
	root := "frb" + randomHex(4)
	cluster := startRBChild(b, rbChildEnv+"=cluster")
	urls := cluster.line(b, "urls ")
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	parts := []int{1, 3}
	if s := os.Getenv("FIRMCAST_BENCH_PARTITIONS"); s != "" {
		parts = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatal(err)
			}
			parts = append(parts, n)
		}
	}
	round := 0
	top := b // the children outlive each sub-benchmark (and its run with b.N = 1)
	for _, np := range parts {
		// Each layout its own namespace (a namespace's partition count is
		// fixed) and topic root, its own instances.
		ns, root := fmt.Sprintf("%s%d", rbNS, np), fmt.Sprintf("%s-p%d", root, np)
		topics := schemas.MustTopics(root)
		var insts []*rbChild
		for k := 1; k <= 3; k++ {
			b.Run(fmt.Sprintf("partitions=%d/instances=%d", np, k), func(b *testing.B) {
				for len(insts) < k {
					c := startRBChild(top, rbChildEnv+"=instance", rbURLsEnv+"="+urls, rbRootEnv+"="+root,
						fmt.Sprintf("%s=rb-pub%d-p%d", rbNameEnv, len(insts), np), fmt.Sprintf("%s=%s", rbNSEnv, ns),
						fmt.Sprintf("%s=%d", rbPartsEnv, np))
					c.line(b, "ready")
					insts = append(insts, c)
				}
				round++
				rbRound(b, js, nc, topics, ns, np, insts[:k], cluster, devices, b.N, round)
			})
		}
		for _, c := range insts {
			c.stop()
		}
	}
}

// rbRound runs one campaign of devices x per reports and reports the
// figures.
func rbRound(b *testing.B, js jetstream.JetStream, nc *nats.Conn, topics schemas.Topics, ns string, parts int, insts []*rbChild, cluster *rbChild, devices, per, round int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fmt.Fprintf(insts[0].in, "campaign %d %d\n", devices, round)
	camp := insts[0].line(b, "campaign ")
	// One watch of each partition (publisher/partition.go names them),
	// merged.
	updates := make(chan jetstream.KeyValueEntry, 1024)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for i := range parts {
		bucket := ns + "_campdev"
		if i > 0 {
			bucket += fmt.Sprintf("_p%d", i)
		}
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			b.Fatal(err)
		}
		w, err := kv.Watch(wctx, camp+".*", jetstream.IgnoreDeletes())
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			defer w.Stop()
			for {
				select {
				case e, ok := <-w.Updates():
					if !ok {
						return
					}
					if e != nil {
						select {
						case updates <- e:
						case <-wctx.Done():
							return
						}
					}
				case <-wctx.Done():
					return
				}
			}
		}()
	}
	type dev struct {
		sent, seen uint64
		at         time.Time
	}
	devs := map[string]*dev{}
	notified := 0
	// Every device notified (the leader's tick) before the clock starts.
	for notified < devices {
		select {
		case e := <-updates:
			var st publisher.DeviceState
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				b.Fatal(err)
			}
			if st.State == publisher.DevState(schemas.StateNotified) && devs[st.Device] == nil {
				devs[st.Device] = &dev{}
				notified++
			}
		case <-ctx.Done():
			b.Fatalf("%d of %d devices notified", notified, devices)
		}
	}
	send := func(id string, d *dev) {
		d.sent++
		r := schemas.DeviceReport{V: schemas.Version, Device: id, Campaign: camp, State: schemas.StateDownloading,
			BytesDone: d.sent * 1000, BytesTotal: uint64(per) * 1000, ActiveVersion: 1, Counter: d.sent, Time: time.Now().UnixMilli()}
		if d.sent == uint64(per) {
			r.State, r.BytesDone, r.ActiveVersion = schemas.StateConfirmed, r.BytesTotal, 2
		}
		d.at = time.Now()
		t, _ := topics.Report(id)
		p, err := schemas.Encode(&r)
		if err != nil {
			b.Fatal(err)
		}
		if err := nc.Publish(t.NATS, p); err != nil {
			b.Fatal(err)
		}
	}
	rcl0 := cluster.cpu(b)
	raw := rbRaw(b, ctx, js, devices, per)
	rawCl := cluster.cpu(b) - rcl0
	cpu0 := make([]time.Duration, len(insts))
	for i, c := range insts {
		cpu0[i] = c.cpu(b)
	}
	cl0, self0 := cluster.cpu(b), selfCPU()
	b.ResetTimer()
	start := time.Now()
	for id, d := range devs {
		send(id, d)
	}
	done, resent := 0, 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for done < devices {
		select {
		case e := <-updates:
			var st publisher.DeviceState
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				b.Fatal(err)
			}
			d := devs[st.Device]
			if d == nil || st.Counter <= d.seen {
				continue
			}
			d.seen = st.Counter
			switch {
			case d.seen == uint64(per):
				done++
			case d.seen == d.sent:
				send(st.Device, d)
			}
		case <-tick.C:
			// A report lost (an error logged by an instance) is sent
			// again, as a device's retry would.
			for id, d := range devs {
				if d.seen < d.sent && time.Since(d.at) > 2*time.Second {
					d.sent--
					send(id, d)
					resent++
				}
			}
		case <-ctx.Done():
			b.Fatalf("%d of %d devices done", done, devices)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	n := float64(devices * per)
	perK := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n * 1000 }
	b.ReportMetric(n/el.Seconds(), "reports/s")
	b.ReportMetric(raw, "raw-updates/s")
	b.ReportMetric(n/el.Seconds()/raw, "ratio")
	var sum time.Duration
	for i, c := range insts {
		d := c.cpu(b) - cpu0[i]
		sum += d
		b.ReportMetric(perK(d), fmt.Sprintf("inst%d-cpu-ms/1k", i))
	}
	b.ReportMetric(perK(sum), "insts-cpu-ms/1k")
	b.ReportMetric(perK(cluster.cpu(b)-cl0), "cluster-cpu-ms/1k")
	b.ReportMetric(perK(selfCPU()-self0), "gen-cpu-ms/1k")
	b.ReportMetric(perK(rawCl), "raw-cluster-cpu-ms/1k")
	b.ReportMetric(0, "ns/op")
	if resent > 0 {
		b.Logf("%d reports sent again", resent)
	}
}

// rbRaw runs devices x per raw compare-and-set updates of a 252-byte
// value into the scratch bucket frb_raw (R3), devices keys at once, and
// returns their rate.
func rbRaw(b *testing.B, ctx context.Context, js jetstream.JetStream, devices, per int) float64 {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: rbNS + "_raw", History: 1, Storage: jetstream.FileStorage, Replicas: 3})
	if err != nil {
		b.Fatal(err)
	}
	val := bytes.Repeat([]byte("x"), 252)
	revs := make([]uint64, devices)
	for i := range devices {
		if revs[i], err = kv.Put(ctx, fmt.Sprintf("d%d", i), val); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	var lost atomic.Int64
	errs := make(chan error, devices)
	for i := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				rev, err := kv.Update(ctx, fmt.Sprintf("d%d", i), val, revs[i])
				if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
					// Seen now and then on the loaded machine with no
					// other writer (a write retried across a leader
					// change): read the revision and go on, as the
					// publisher does after a lost compare-and-set.
					lost.Add(1)
					e, gerr := kv.Get(ctx, fmt.Sprintf("d%d", i))
					if gerr == nil {
						revs[i] = e.Revision()
						continue
					}
				}
				if err != nil {
					errs <- err
					return
				}
				revs[i] = rev
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if n := lost.Load(); n > 0 {
		b.Logf("raw: %d updates lost their compare-and-set", n)
	}
	return float64(devices*per) / el.Seconds()
}
