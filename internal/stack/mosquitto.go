package stack

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/firmcast/firmcast/broker"
)

// DefaultMosquittoReloadGap is Config.MosquittoReloadGap's default.
const DefaultMosquittoReloadGap = 5 * time.Second

// mosquittoRetry is how long the password file sync waits before it tries
// again after a failure (a removed device stays connected until a sync
// succeeds, so it is retried rather than given up).
const mosquittoRetry = 5 * time.Second

// mosquittoSync keeps an external mosquitto's password file in step with
// the device registry: at start and after every device this instance adds
// or removes, it writes the file again (the configured accounts, then
// every registered device) and sends mosquitto SIGHUP, which makes it
// read the file again and drop the clients whose user is gone. Changes
// that come while a sync runs, or within gap of the last one, are folded
// into the next one: a reload costs mosquitto a password check per
// connected client (60 to 70 µs each with 101 PBKDF2 rounds on this
// machine, so 6 to 7 s for 100,000 devices), during which it serves no one.
type mosquittoSync struct {
	path string
	gap  time.Duration
	// pid returns mosquitto's process id (a fixed one or a pid file read
	// at each reload, since mosquitto may have been restarted); nil when
	// neither is configured: the file is written but not reloaded.
	pid func() (int, error)
	// static are the backend accounts' lines and reserved their users
	// (no device record may stand in for one); devStatic are the device
	// accounts' lines by user (a registered device of the same id wins,
	// as in publisher.DeviceAuthenticator).
	static    []string
	reserved  map[string]bool
	devStatic map[string]string
	devices   func(ctx context.Context) ([]string, error)
	log       *slog.Logger
	kick      chan struct{}
	cancel    context.CancelFunc
	done      chan struct{}
}

// newMosquittoSync prepares the sync of the password file at path from
// accounts (backends and devices; services cannot use MQTT and are left
// out, as by broker.MosquittoConfig). Every account needs its clear
// secret: mosquitto cannot read the credentials file's sha256 hashes.
func newMosquittoSync(path string, pid int, pidFile string, gap time.Duration, accounts []broker.Account, log *slog.Logger) (*mosquittoSync, error) {
	if gap < 0 {
		return nil, fmt.Errorf("stack: mosquitto: negative reload gap %v", gap)
	}
	m := &mosquittoSync{path: path, gap: gap, reserved: map[string]bool{}, devStatic: map[string]string{}, log: log,
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	switch {
	case pid != 0 && pidFile != "":
		return nil, errors.New("stack: mosquitto: a pid and a pid file given; give one")
	case pid < 0:
		return nil, fmt.Errorf("stack: mosquitto: pid %d", pid)
	case pid > 0:
		m.pid = func() (int, error) { return pid, nil }
	case pidFile != "":
		m.pid = func() (int, error) { return broker.ReadPIDFile(pidFile) }
	}
	seen := map[string]bool{}
	for _, a := range accounts {
		if a.Role == broker.RoleService || seen[a.Username] {
			continue
		}
		seen[a.Username] = true
		if a.Secret == "" {
			return nil, fmt.Errorf("stack: mosquitto password file: account %q has no clear secret (mosquitto cannot read its hash)", a.Username)
		}
		line, err := broker.MosquittoPasswordLine(a.Username, a.Secret, broker.MosquittoIterations, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("stack: mosquitto password file: %w", err)
		}
		if a.Role == broker.RoleDevice {
			m.devStatic[a.Username] = line
			continue
		}
		m.static = append(m.static, line)
		m.reserved[a.Username] = true
	}
	return m, nil
}

// changed asks for a sync soon; it never blocks.
func (m *mosquittoSync) changed(string) {
	select {
	case m.kick <- struct{}{}:
	default: // a sync is already due; it reads the registry afresh
	}
}

// start runs the first sync now (its error is returned: a server that
// cannot keep the file should not start) and later ones in a goroutine
// until stop.
func (m *mosquittoSync) start(ctx context.Context, devices func(ctx context.Context) ([]string, error)) error {
	m.devices = devices
	if err := m.sync(ctx); err != nil {
		return err
	}
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	go m.run(life)
	return nil
}

func (m *mosquittoSync) run(ctx context.Context) {
	defer close(m.done)
	var retry <-chan time.Time
	last := time.Now() // start ran the first sync
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		case <-retry:
		}
		retry = nil
		if wait := m.gap - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		select { // a change that came while waiting is in this sync
		case <-m.kick:
		default:
		}
		last = time.Now()
		if err := m.sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.Error("mosquitto password file not updated: removed devices stay connected and new ones cannot connect until it is; retrying",
				"file", m.path, "err", err, "retry", mosquittoRetry)
			retry = time.After(mosquittoRetry)
		}
	}
}

// sync writes the password file from the accounts and the registry and
// makes mosquitto reload it.
func (m *mosquittoSync) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	devs, err := m.devices(ctx)
	if err != nil {
		return fmt.Errorf("stack: mosquitto password file: registry: %w", err)
	}
	lines := append([]string(nil), m.static...)
	inRegistry := map[string]bool{}
	for _, l := range devs {
		user, _, _ := strings.Cut(l, ":")
		if m.reserved[user] {
			continue // a backend's name: the account wins, as in DeviceAuthenticator
		}
		inRegistry[user] = true
		lines = append(lines, l)
	}
	for _, user := range slices.Sorted(maps.Keys(m.devStatic)) {
		if !inRegistry[user] {
			lines = append(lines, m.devStatic[user])
		}
	}
	if err := broker.WriteMosquittoPasswd(m.path, lines); err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	if m.pid == nil {
		return nil
	}
	pid, err := m.pid()
	if err != nil {
		return fmt.Errorf("stack: mosquitto reload: %w", err)
	}
	if err := broker.ReloadMosquitto(pid); err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	m.log.Debug("mosquitto password file rewritten and reloaded", "file", m.path, "users", len(lines), "pid", pid)
	return nil
}

// stop ends the goroutine of start. Safe on a sync never started.
func (m *mosquittoSync) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
}
