package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firmcast/firmcast/bootctl"
	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/devicefile"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "firmcast-agent-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "firmcast-agent")
	if out, err := exec.Command("go", "build", "-o", agentBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building firmcast-agent: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	vendorUUID = "fafafafa-fafa-fafa-fafa-fafafafafafa"
	classUUID  = "c1c1c1c1-c1c1-c1c1-c1c1-c1c1c1c1c1c1"
)

// setup is a device on disk (flash file + device file with v1 installed),
// a signing key, and an embedded broker with a publisher stand-in.
type setup struct {
	dir, flash, pubPEM string
	key                ed25519.PrivateKey
	url                string
	topics             schemas.Topics
	pub                broker.Transport

	mu      sync.Mutex
	reports []schemas.DeviceReport
	got     chan struct{}
}

func newSetup(t testing.TB, slotSize int64) *setup {
	s := newBrokerSetup(t)
	const sector = 4096
	l := bootctl.DefaultLayout(8, 2, int(slotSize/sector))
	g := bootctl.Geometry{SectorSize: sector, Sectors: l.Sectors(), WriteAlign: 16}
	f, err := bootctl.CreateFileFlash(s.flash, g)
	if err != nil {
		t.Fatal(err)
	}
	devKey := bytes.Repeat([]byte{7}, 32)
	d, err := bootctl.Open(f, l, bootctl.RootOfTrust{DeviceKey: devKey})
	if err != nil {
		t.Fatal(err)
	}
	v1 := []byte("firmware v1, the installed one")
	ctx := context.Background()
	if err := d.Stage(ctx, 0, v1, bootctl.CandidateInfo{Version: 1, SecurityCounter: 1, Digest: sha256.Sum256(v1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Confirm(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := devicefile.Write(s.flash, devicefile.File{Geometry: g, Layout: l, TrialBoots: 3, DeviceKey: hex.EncodeToString(devKey)}); err != nil {
		t.Fatal(err)
	}
	return s
}

// newBrokerSetup is a setup without the device: the flash path, the signing
// key (trusted through pubPEM) and the broker.
func newBrokerSetup(t testing.TB) *setup {
	s := &setup{dir: t.TempDir(), got: make(chan struct{}, 1)}
	s.flash = filepath.Join(s.dir, "flash.bin")
	s.key = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	pem, err := suit.MarshalPublicKeyPEM(s.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	s.pubPEM = filepath.Join(s.dir, "trust.pub.pem")
	os.WriteFile(s.pubPEM, pem, 0o600)

	s.url = testutil.StartMochi(t, broker.MQTTServerConfig{}).URL()
	s.topics = testutil.UniqueTopics(t)
	ctx := context.Background()
	s.pub, err = broker.Dial(ctx, broker.Config{URL: s.url, Topics: s.topics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.pub.Close(context.Background()) })
	_, err = s.pub.Subscribe(ctx, s.topics.ReportsAll(), func(_ context.Context, m broker.Message) {
		var r schemas.DeviceReport
		if schemas.Decode(m.Payload, &r) != nil {
			return
		}
		s.mu.Lock()
		s.reports = append(s.reports, r)
		s.mu.Unlock()
		select {
		case s.got <- struct{}{}:
		default:
		}
	}, broker.SubscribeOptions{Family: broker.FamilyReport})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// offer serves img and publishes a signed notice for it to dev.
func (s *setup) offer(t testing.TB, dev string, img []byte, chunk uint32) {
	ctx := context.Background()
	signer, err := suit.NewKeySigner(s.key, suit.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	vendor, _ := parseUUID("", vendorUUID)
	class, _ := parseUUID("", classUUID)
	env, err := suit.Create(ctx, suit.CreateOptions{Image: bytes.NewReader(img), VendorID: vendor, ClassID: class, Seq: 2, ChunkSize: chunk}, signer)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := schemas.BuildChunkTable(bytes.NewReader(img), chunk)
	if err != nil {
		t.Fatal(err)
	}
	cs := &testutil.ChunkServer{Transport: s.pub, Topics: s.topics, Image: img, Table: tab}
	if err := cs.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n := schemas.UpdateNotice{V: 1, Campaign: "c1", Target: dev, Envelope: env, Image: tab.Image, ChunkSize: chunk}
	if err := suit.SignNotice(ctx, &n, signer); err != nil { // the campaign authority: the same key here
		t.Fatal(err)
	}
	b, err := schemas.Encode(&n)
	if err != nil {
		t.Fatal(err)
	}
	nt, _ := s.topics.Notice(dev)
	if err := s.pub.Publish(ctx, nt, b, broker.PublishOptions{Family: broker.FamilyNotice, Retain: true}); err != nil {
		t.Fatal(err)
	}
}

func (s *setup) wait(t testing.TB, d time.Duration, ok func(schemas.DeviceReport) bool) schemas.DeviceReport {
	deadline := time.After(d)
	for {
		s.mu.Lock()
		for _, r := range s.reports {
			if ok(r) {
				s.mu.Unlock()
				return r
			}
		}
		s.mu.Unlock()
		select {
		case <-s.got:
		case <-deadline:
			t.Fatalf("no matching report within %v (%d reports)", d, len(s.reports))
		}
	}
}

func (s *setup) agent(dev string) *exec.Cmd {
	cmd := exec.Command(agentBin, "run", "--device-id", dev, "--broker", s.url, "--flash", s.flash,
		"--state", filepath.Join(s.dir, "state"), "--trust", s.pubPEM, "--vendor-id", vendorUUID, "--class-id", classUUID,
		"--root", s.topics.Root(), "--chunk-idle", "500ms", "--log-level", "warn")
	return cmd
}

func randomImage(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestRunAndStatus runs the binary as a child process: it takes a notice
// to confirmed, stops cleanly on SIGTERM, and status reports the outcome.
func TestRunAndStatus(t *testing.T) {
	s := newSetup(t, 256<<10)
	var stderr bytes.Buffer
	cmd := s.agent("dev-bin")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	s.wait(t, 20*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" && r.ActiveVersion == 1 })
	s.offer(t, "dev-bin", randomImage(100<<10+3), 4096)
	s.wait(t, 30*time.Second, func(r schemas.DeviceReport) bool {
		return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, stderr.String())
	}
	out, err := exec.Command(agentBin, "status", "--state", filepath.Join(s.dir, "state"), "--json").CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var st statusJSON
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status output %q: %v", out, err)
	}
	if st.State != "confirmed" || st.Campaign != "c1" || st.Version != 2 {
		t.Errorf("status %+v: want confirmed, campaign c1, version 2", st)
	}
}

func TestRunFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "required flag"},
		{[]string{"status"}, "required flag"},
		{[]string{"run", "--device-id", "d", "--broker", "mqtt://x", "--flash", "f", "--state", "s", "--trust", "k",
			"--vendor-id", "nope", "--class-id", classUUID}, "--vendor-id \"nope\": want a UUID"},
		{[]string{"run", "--device-id", "d", "--broker", "mqtt://x", "--flash", "f", "--state", "s", "--trust", "/nonexistent",
			"--vendor-id", vendorUUID, "--class-id", classUUID}, "--trust"},
	} {
		out, err := exec.Command(agentBin, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: err %v, output %q; want failure naming %q", tc.args, err, out, tc.want)
		}
	}
}

// BenchmarkAgentPeakRSS measures the peak RSS of a firmcast-agent child
// process taking an update of a 1 MiB and a 64 MiB image over the embedded
// MQTT broker (16 KiB chunks): memory must not grow with the image size.
func BenchmarkAgentPeakRSS(b *testing.B) {
	for _, size := range []int{1 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("%dMiB", size>>20), func(b *testing.B) {
			img := randomImage(size)
			var rss int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s := newSetup(b, int64(size)+4096)
				cmd := s.agent("dev-mem")
				var errb bytes.Buffer
				if v := os.Getenv("AGENT_ENV"); v != "" {
					cmd.Env = append(os.Environ(), v)
				}
				if os.Getenv("AGENT_GCTRACE") != "" {
					cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
					cmd.Stderr = &errb
				}
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				s.wait(b, 30*time.Second, func(r schemas.DeviceReport) bool { return r.Text == "connected" })
				b.StartTimer()
				s.offer(b, "dev-mem", img, 16<<10)
				s.wait(b, 5*time.Minute, func(r schemas.DeviceReport) bool {
					return r.State == schemas.StateConfirmed && r.ActiveVersion == 2
				})
				b.StopTimer()
				// VmHWM is the peak RSS of the process since exec (rusage's
				// Maxrss is not: it may include the parent's pages from
				// before exec, as Go starts children with vfork).
				hwm := vmHWM(b, cmd.Process.Pid)
				if errb.Len() > 0 {
					lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
					b.Logf("last gc lines:\n%s", strings.Join(lines[max(0, len(lines)-5):], "\n"))
				}
				cmd.Process.Signal(syscall.SIGTERM)
				if err := cmd.Wait(); err != nil {
					b.Fatal(err)
				}
				rss = max(rss, hwm)
			}
			b.ReportMetric(float64(rss)/1024, "peak-RSS-MiB")
			b.SetBytes(int64(size))
		})
	}
}

// vmHWM returns the peak resident set size of pid in KiB.
func vmHWM(t testing.TB, pid int) int64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		var v int64
		if _, err := fmt.Sscanf(l, "VmHWM: %d kB", &v); err == nil {
			return v
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
