package broker

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas"
)

// MosquittoIterations is the PBKDF2 iteration count of the password
// hashes MosquittoConfig writes and the device registry stores: 101,
// mosquitto_passwd's own default. It is low on purpose: device and
// backend secrets hold at least 128 random bits, so a slow hash adds no
// protection against guessing, while every CONNECT, a garbage one
// included, costs the broker one PBKDF2 (mosquitto on its one thread).
// docs/SECURITY.md and docs/RELIABILITY.md give the figures.
const MosquittoIterations = 101

// MosquittoSpec is what MosquittoConfig exports. It is taken by value.
type MosquittoSpec struct {
	// Topics is the root the policy protects. Default root "firmcast".
	Topics schemas.Topics
	// Accounts are the backend identities and devices, each with its
	// clear Secret (mosquitto derives its own hash); service accounts are
	// skipped. At least one backend account is required.
	Accounts []Account
	// MaxQueued is mosquitto's max_queued_messages: QoS 1 messages held
	// per client while offline or in flight. Default DefaultMaxQueued.
	MaxQueued int
	// Iterations is the PBKDF2 count. Default MosquittoIterations.
	Iterations int
	// Rand supplies password salts. Default crypto/rand.Reader (tests
	// inject a deterministic reader).
	Rand io.Reader
}

// MosquittoFiles names the files MosquittoConfig wrote.
type MosquittoFiles struct {
	// Passwd is the password file (mosquitto_passwd format, $7$ PBKDF2-SHA512).
	Passwd string
	// ACL is the acl_file.
	ACL string
	// Conf is the conf snippet: include it (include_dir) or copy its lines
	// into mosquitto.conf.
	Conf string
}

// MosquittoConfig writes, into dir (created if needed), the firmcast
// access policy for an external mosquitto 2.0:
//
//   - passwd: one "user:$7$<iterations>$<salt>$<hash>" line per account,
//     PBKDF2-SHA512 as mosquitto_passwd writes them (mode 0600);
//   - acl: the backend users get readwrite on root/#; every other user
//     gets only the device patterns, on their own user name (%u), so the
//     file does not grow with the fleet;
//   - firmcast.conf: password_file, acl_file, no anonymous access,
//     use_username_as_clientid (every connection's client id is its user
//     name: no client can take over another identity's session, so each
//     backend instance needs an account of its own), and the queue limits
//     the design relies on (a small max_queued_messages so a broker never
//     holds an image per offline device, set_tcp_nodelay for quick
//     request/response).
//
// Service accounts are left out of the password file: a service calls
// the campaign API over NATS and may do nothing on MQTT, so it cannot
// connect to mosquitto at all (the ACL's device patterns apply to every
// user and would otherwise give it the topics of a device named like it).
//
// One deviation from the embedded brokers' policy: class announcements
// are matched as root/v1/class/+/announce for every device, because a
// mosquitto pattern cannot name a device's class without one line per
// device; announcements are signed broadcasts, not secrets. Devices must
// use their device id as user name. Files are written atomically (write,
// fsync, rename). Bad input returns ErrBadCredentials.
func MosquittoConfig(dir string, spec MosquittoSpec) (MosquittoFiles, error) {
	if spec.Topics.Root() == "" {
		spec.Topics = schemas.MustTopics("")
	}
	if spec.MaxQueued <= 0 {
		spec.MaxQueued = DefaultMaxQueued
	}
	if spec.Iterations <= 0 {
		spec.Iterations = MosquittoIterations
	}
	if spec.Rand == nil {
		spec.Rand = rand.Reader
	}
	var passwd strings.Builder
	var backends []string
	seen := map[string]bool{}
	for _, a := range spec.Accounts {
		if a.Role == RoleService {
			continue // services call the API over NATS: nothing on MQTT
		}
		if a.Secret == "" {
			return MosquittoFiles{}, fmt.Errorf("%w: user %q: the mosquitto export needs the clear secret, not only its hash", ErrBadCredentials, a.Username)
		}
		if err := (&CredentialStore{}).Add(a.Identity, a.Secret); err != nil {
			return MosquittoFiles{}, err
		}
		if strings.ContainsAny(a.Secret, "\r\n") {
			return MosquittoFiles{}, fmt.Errorf("%w: user %q: secret contains a line break", ErrBadCredentials, a.Username)
		}
		if seen[a.Username] {
			return MosquittoFiles{}, fmt.Errorf("%w: user %q listed twice", ErrBadCredentials, a.Username)
		}
		seen[a.Username] = true
		line, err := MosquittoPasswordLine(a.Username, a.Secret, spec.Iterations, spec.Rand)
		if err != nil {
			return MosquittoFiles{}, err
		}
		passwd.WriteString(line + "\n")
		if a.Role == RoleBackend {
			backends = append(backends, a.Username)
		}
	}
	if len(backends) == 0 {
		return MosquittoFiles{}, fmt.Errorf("%w: no backend account (the backend publishes notices and chunks)", ErrBadCredentials)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return MosquittoFiles{}, fmt.Errorf("broker: mosquitto config dir: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return MosquittoFiles{}, fmt.Errorf("broker: mosquitto config dir: %w", err)
	}
	files := MosquittoFiles{
		Passwd: filepath.Join(abs, "passwd"),
		ACL:    filepath.Join(abs, "acl"),
		Conf:   filepath.Join(abs, "firmcast.conf"),
	}
	conf := fmt.Sprintf(`# firmcast broker access policy (generated by firmcast broker mosquitto-config).
# Include this file (include_dir) or copy these lines into mosquitto.conf.
per_listener_settings false
allow_anonymous false
password_file %s
acl_file %s
# A client's id is its user name, whatever it asks for: mosquitto drops
# the older of two connections with one client id, so a device asking for
# the backend's id (or another device's) would drop it. Each backend
# instance (publisher replica) therefore needs an account of its own.
use_username_as_clientid true
# Fast request/response (campaign API, chunk requests).
set_tcp_nodelay true
# A broker keeps a bounded window per client, of QoS 1 messages only
# (notices, reports, requests): broadcast chunks are QoS 0 and never queued
# for an offline device (devices repair by request). The backend, which
# takes every device's reports, is the client that needs the headroom.
max_queued_messages %d
max_inflight_messages 20
queue_qos0_messages false
# Sessions of clients that never come back are dropped (MQTT v5 clients
# ask for a short session expiry themselves).
persistent_client_expiration 1d
retain_available true
`, files.Passwd, files.ACL, spec.MaxQueued)
	for _, f := range []struct {
		path, data string
		mode       os.FileMode
	}{
		{files.Passwd, passwd.String(), 0o600},
		{files.ACL, MosquittoACL(spec.Topics, backends), 0o644},
		{files.Conf, conf, 0o644},
	} {
		if err := atomicfile.WriteFile(f.path, []byte(f.data), f.mode); err != nil {
			return MosquittoFiles{}, fmt.Errorf("broker: %w", err)
		}
	}
	return files, nil
}

// MosquittoPasswordLine returns "user:$7$<iterations>$<salt>$<hash>":
// PBKDF2-HMAC-SHA512 with a 12-byte salt from r and a 64-byte key, both
// standard base64, the format mosquitto 2.0 reads from its password_file.
func MosquittoPasswordLine(user, secret string, iterations int, r io.Reader) (string, error) {
	if strings.ContainsAny(user, ":\r\n") || user == "" {
		return "", fmt.Errorf("%w: mosquitto user name %q", ErrBadCredentials, user)
	}
	salt := make([]byte, 12)
	if _, err := io.ReadFull(r, salt); err != nil {
		return "", fmt.Errorf("broker: password salt: %w", err)
	}
	key, err := pbkdf2.Key(sha512.New, secret, salt, iterations, 64)
	if err != nil {
		return "", fmt.Errorf("broker: pbkdf2: %w", err)
	}
	return fmt.Sprintf("%s:$7$%d$%s$%s", user, iterations,
		base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key)), nil
}

// MosquittoACL returns the acl_file text for topics: readwrite on the whole
// root for each backend user, and pattern lines (on %u) for devices.
func MosquittoACL(topics schemas.Topics, backends []string) string {
	root := topics.Root()
	var b strings.Builder
	b.WriteString("# firmcast access policy (generated by firmcast broker mosquitto-config).\n")
	b.WriteString("# Backend identities: anything under the topic root.\n")
	for _, u := range backends {
		fmt.Fprintf(&b, "user %s\ntopic readwrite %s/#\n\n", u, root)
	}
	b.WriteString("# Devices (user name = device id): own notices, own chunk replies,\n")
	b.WriteString("# class announcements, image chunk broadcasts; publish own reports and\n")
	b.WriteString("# own chunk requests. Patterns apply to every user, so the file does not grow\n")
	b.WriteString("# with the fleet. Mosquitto checks a will against these lines when it\n")
	b.WriteString("# sends it: a device's will can only go where the device may publish\n")
	b.WriteString("# itself (its own report, its own chunk requests), never onto another\n")
	b.WriteString("# device's topics.\n")
	for _, l := range []string{
		"read " + root + "/v1/dev/%u/notice",
		"read " + root + "/v1/dev/%u/chunks",
		"read " + root + "/v1/class/+/announce",
		"read " + root + "/v1/img/+/chunks",
		"write " + root + "/v1/dev/%u/report",
		"write " + root + "/v1/dev/%u/req",
	} {
		b.WriteString("pattern " + l + "\n")
	}
	return b.String()
}

// WriteMosquittoPasswd replaces the password file at path with lines (one
// "user:$7$..." entry each, as MosquittoPasswordLine writes them), mode
// 0600, atomically: written to a temporary file, fsynced and renamed, so
// a mosquitto reloading at any moment reads either the old file or the
// new one, never a part. The new file keeps the old one's owner and
// group: mosquitto reads it after dropping its privileges (the
// eclipse-mosquitto image gives its files to user mosquitto), so a file
// owned by the writer alone would be unreadable at the next reload; a
// writer that may not give it away gets an error (the file is then
// written, but owned by the writer). A line that is not "user:$7$..." or
// holds a line break returns ErrBadCredentials and leaves the file as it
// was.
func WriteMosquittoPasswd(path string, lines []string) error {
	var b strings.Builder
	for _, l := range lines {
		user, hash, ok := strings.Cut(l, ":")
		if !ok || user == "" || !strings.HasPrefix(hash, "$7$") || strings.ContainsAny(l, "\r\n") {
			return fmt.Errorf("%w: mosquitto password line for user %q is not user:$7$...", ErrBadCredentials, user)
		}
		b.WriteString(l)
		b.WriteString("\n")
	}
	old, statErr := os.Stat(path)
	if err := atomicfile.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("broker: mosquitto password file: %w", err)
	}
	if statErr != nil {
		return nil // a new file: the writer's
	}
	uid, gid, ok := fileOwner(old)
	if !ok {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("broker: mosquitto password file: %w", err)
	}
	if nu, ng, _ := fileOwner(fi); nu == uid && ng == gid {
		return nil
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("broker: mosquitto password file: keep its owner %d:%d: %w", uid, gid, err)
	}
	return nil
}

// ReloadMosquitto sends SIGHUP to the mosquitto process pid: mosquitto
// 2.0 then reads its configuration, password file and ACL again and
// checks every connected client against them, disconnecting a client
// whose user is no longer in the password file. It does not wait for the
// reload. pid must be positive.
func ReloadMosquitto(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("broker: mosquitto pid %d", pid)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return fmt.Errorf("broker: mosquitto pid %d: %w", pid, err)
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("broker: SIGHUP to mosquitto pid %d: %w", pid, err)
	}
	return nil
}

// ReadPIDFile reads a process id from a pid file (decimal, surrounding
// white space ignored), as mosquitto's pid_file or a service manager
// writes it.
func ReadPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("broker: pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("broker: pid file %s: %q is not a process id", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}
