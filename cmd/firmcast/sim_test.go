package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// TestSimAgainstServer runs `firmcast sim` against a separate backend (an
// in-process publisher behind its HTTP API, with embedded brokers whose
// auth hook reads the publisher's registry): devices register through the
// API and a campaign rolls v2 out to all of them.
func TestSimAgainstServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ss := startSimServer(t)
	out, err := runFirmcast(t, append(ss.args(), "--devices", "6", "--image", ss.image, "--phases", "50,100", "--json",
		"--dir", filepath.Join(ss.dir, "sim"))...)
	if err != nil {
		t.Fatalf("sim: %v\n%s", err, out)
	}
	var sum fleet.Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if sum.Outcome != "completed" || sum.ConfirmedV2 != 6 || sum.Targeted != 6 {
		t.Fatalf("outcome %s, %d/%d confirmed: %+v", sum.Outcome, sum.ConfirmedV2, sum.Targeted, sum.Problems)
	}
	t.Logf("setup %.1fs wall %.1fs", sum.SetupSeconds, sum.WallSeconds)
	devs, err := ss.st.Pub.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 6 {
		t.Fatalf("%d devices registered through the API, want 6", len(devs))
	}
}

// simServer is a backend for `firmcast sim`: an in-process publisher
// behind its HTTP API, with embedded brokers whose auth hook reads the
// publisher's registry, a trust key file and a small v2 image.
type simServer struct {
	st      *stack.Stack
	url     string
	dir     string
	pubPath string
	image   string
	topics  schemas.Topics
}

func startSimServer(t *testing.T) *simServer {
	t.Helper()
	dir := t.TempDir()
	key := testutil.SigningKey(t, "es256")
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := suit.MarshalPublicKeyPEM(key.Public())
	pubPath := filepath.Join(dir, "trust.pub.pem")
	if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	vendor, _ := parseUUID(vendorUUID)
	class, _ := parseUUID(classUUID)
	topics := testutil.UniqueTopics(t)
	st := stacktest.Start(t, stack.Config{
		DataDir: filepath.Join(dir, "nats"), Topics: topics,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Publisher: publisher.Config{
			Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: 4096,
			TickInterval: 50 * time.Millisecond, StartWindow: -1, RepairWindow: 50 * time.Millisecond,
		},
	})
	ts := httptest.NewServer(st.Pub.Handler())
	t.Cleanup(ts.Close)
	img := filepath.Join(dir, "v2.bin")
	if err := os.WriteFile(img, fleet.Image(9, "v2", 40<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	return &simServer{st: st, url: ts.URL, dir: dir, pubPath: pubPath, image: img, topics: topics}
}

// args are sim's arguments for this backend.
func (s *simServer) args() []string {
	return []string{"sim", "--server", s.url, "--api-key", s.st.AdminKey, "--broker", s.st.MQTTURL,
		"--root", s.topics.Root(), "--trust", s.pubPath, "--vendor-id", vendorUUID, "--class-id", classUUID}
}

// TestSimProcs runs `firmcast sim --procs 2` (children: this test binary,
// see TestSimShareChild): 10 devices in two processes, registered through
// the API, a campaign to all of them in which the two devices --fail-rate
// chose roll back, and the summary added up from both processes.
func TestSimProcs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ss := startSimServer(t)
	out, err := runSimCmd(ctx, t, nil, "", append(ss.args(), "--devices", "10", "--procs", "2", "--image", ss.image,
		"--phases", "100", "--json", "--fail-rate", "0.2", "--fail-threshold", "50%", "--dir", filepath.Join(ss.dir, "sim"))...)
	// Exit code 1, as sim in one process: not every device confirmed.
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "8 of 10") {
		t.Fatalf("sim: %v, want exit code 1 with 8 of 10 devices confirmed\n%s", err, out)
	}
	var sum fleet.Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	t.Logf("setup %.1fs wall %.1fs simulator %+v", sum.SetupSeconds, sum.WallSeconds, sum.Simulator)
	if sum.Outcome != "completed" || sum.Targeted != 10 || sum.ConfirmedV2 != 8 || sum.RolledBack != 2 {
		t.Fatalf("outcome %s, %d/%d confirmed, %d rolled back (want 8 and 2, --fail-rate 0.2): %+v",
			sum.Outcome, sum.ConfirmedV2, sum.Targeted, sum.RolledBack, sum.Problems)
	}
	for _, p := range sum.Problems {
		if !p.Planned {
			t.Errorf("device %s failed unplanned: %+v", p.Device, p)
		}
	}
	if sum.DeviceBytes < 8*(40<<10) || sum.DoneSeconds <= 0 || sum.StagedSeconds <= 0 {
		t.Errorf("devices received %d bytes, staged %.2fs, done %.2fs", sum.DeviceBytes, sum.StagedSeconds, sum.DoneSeconds)
	}
	if u := sum.Simulator; u == nil || u.Procs != 2 || u.CPUSeconds <= 0 || u.PeakRSS <= 0 {
		t.Errorf("simulator usage %+v", u)
	}
	devs, err := ss.st.Pub.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, d := range devs {
		ids[d.ID] = true
	}
	for i := 1; i <= 10; i++ {
		if id := fmt.Sprintf("sim-%04d", i); !ids[id] {
			t.Errorf("device %s not registered (%d devices)", id, len(devs))
		}
	}
}

// TestSimProcsChildDies kills one child of `sim --procs 2` (running
// until interrupted): sim fails naming it, and the other child is gone.
func TestSimProcsChildDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ss := startSimServer(t)
	pids := t.TempDir()
	errw := &syncBuffer{}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := runSimCmd(ctx, t, errw, pids, append(ss.args(), "--devices", "4", "--procs", "2", "--interval", "50ms",
			"--image-size", "8KiB")...)
		done <- result{out, err}
	}()
	var kids []int
	for len(kids) < 2 || !strings.Contains(errw.String(), "running until interrupted") {
		select {
		case r := <-done:
			t.Fatalf("sim ended before its children were up: %v\n%s\n%s", r.err, r.out, errw.String())
		case <-ctx.Done():
			t.Fatalf("children not up: %d pids; %s", len(kids), errw.String())
		case <-time.After(20 * time.Millisecond):
		}
		kids = readPIDs(t, pids)
	}
	if err := syscall.Kill(kids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatalf("sim still running after a child was killed: %s", errw.String())
	}
	if r.err == nil || !errors.Is(r.err, fleet.ErrSimFailed) || !strings.Contains(r.err.Error(), "sim share") {
		t.Fatalf("sim: %v, want %v naming the child\n%s", r.err, fleet.ErrSimFailed, errw.String())
	}
	if err := syscall.Kill(kids[1], 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the other child (pid %d) still exists: %v", kids[1], err)
	}
}

// runSimCmd runs firmcast with args, its `sim` running its children
// through this test binary (TestSimShareChild), each of which writes its
// pid into pidDir when that is set. stderr goes to errw (nil: discarded).
func runSimCmd(ctx context.Context, t *testing.T, errw io.Writer, pidDir string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	for _, c := range root.Commands() {
		if c.Name() == "sim" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(newSimCmdWith(func(args ...string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestSimShareChild$", "--"}, args...)...)
		cmd.Env = append(os.Environ(), simChildEnv+"=1", simChildPIDsEnv+"="+pidDir)
		return cmd, nil
	}))
	if errw == nil {
		errw = io.Discard
	}
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(errw)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

const (
	simChildEnv     = "FIRMCAST_TEST_SIM_CHILD"
	simChildPIDsEnv = "FIRMCAST_TEST_SIM_PIDS"
)

// TestSimShareChild is not a test: it is a child of `sim --procs` in
// TestSimProcs when this binary runs with FIRMCAST_TEST_SIM_CHILD=1, and
// runs firmcast with the arguments after "--" as main would.
func TestSimShareChild(t *testing.T) {
	if os.Getenv(simChildEnv) != "1" {
		return
	}
	if dir := os.Getenv(simChildPIDsEnv); dir != "" {
		pid := strconv.Itoa(os.Getpid())
		if err := os.WriteFile(filepath.Join(dir, pid), []byte(pid), 0o600); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	}
	var args []string
	for i, a := range os.Args {
		if a == "--" {
			args = os.Args[i+1:]
			break
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := newRootCmd()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Stderr.WriteString("firmcast: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}

// readPIDs returns the pids the children wrote into dir, sorted.
func readPIDs(t *testing.T, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, n)
		}
	}
	sort.Ints(pids)
	return pids
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSimProcsChildFailsAtStart: a child whose devices cannot be
// registered (one id is taken) fails the whole sim, with its error, and
// no child is left.
func TestSimProcsChildFailsAtStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ss := startSimServer(t)
	if err := ss.st.RegisterDevice(ctx, "sim-0004", "sim", "0123456789abcdef0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	pids := t.TempDir()
	out, err := runSimCmd(ctx, t, nil, pids, append(ss.args(), "--devices", "4", "--procs", "2", "--image", ss.image)...)
	if !errors.Is(err, fleet.ErrSimFailed) || !strings.Contains(err.Error(), "sim-0004") {
		t.Fatalf("sim: %v, want %v with the child's error\n%s", err, fleet.ErrSimFailed, out)
	}
	for _, pid := range readPIDs(t, pids) {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child pid %d still exists: %v", pid, err)
		}
	}
}

// TestSimProcsStopsWithParent stops `sim --procs 2` (running until
// interrupted) by ending its context, as Ctrl-C would: sim returns
// cleanly and both children are gone.
func TestSimProcsStopsWithParent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ss := startSimServer(t)
	pids := t.TempDir()
	errw := &syncBuffer{}
	run, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		_, err := runSimCmd(run, t, errw, pids, append(ss.args(), "--devices", "4", "--procs", "2", "--interval", "50ms",
			"--image-size", "8KiB")...)
		done <- err
	}()
	for !strings.Contains(errw.String(), "device states") {
		select {
		case err := <-done:
			t.Fatalf("sim ended early: %v\n%s", err, errw.String())
		case <-ctx.Done():
			t.Fatalf("sim not running: %s", errw.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	kids := readPIDs(t, pids)
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sim stopped with %v\n%s", err, errw.String())
		}
	case <-ctx.Done():
		t.Fatalf("sim did not stop: %s", errw.String())
	}
	if len(kids) != 2 {
		t.Fatalf("children %v, want 2", kids)
	}
	for _, pid := range kids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child pid %d still exists: %v", pid, err)
		}
	}
	if !strings.Contains(errw.String(), "stopped; device states: map[idle:4]") {
		t.Errorf("no final states of the 4 devices:\n%s", errw.String())
	}
}
