package main

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/sha512"
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func runBrokerCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestMosquittoConfigCmd(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(creds, []byte("# fleet\nbackend backend bsecret\nservice ci-bot csecret\ndevice dev1 s1 sensor\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "mq")
	t.Setenv("FIRMCAST_ROOT", "acme/firmcast")
	if _, err := runBrokerCmd(t, "broker", "mosquitto-config", "--out", out, "--credentials", creds, "--device", "dev2:s2:cam"); err != nil {
		t.Fatal(err)
	}
	passwd, err := os.ReadFile(filepath.Join(out, "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(passwd)), "\n")
	if len(lines) != 3 {
		t.Fatalf("passwd has %d lines, want 3 (the service account left out: nothing on MQTT):\n%s", len(lines), passwd)
	}
	// Each line verifies as mosquitto would: PBKDF2-SHA512 of the secret.
	secrets := map[string]string{"backend": "bsecret", "dev1": "s1", "dev2": "s2"}
	for _, l := range lines {
		user, h, _ := strings.Cut(l, ":")
		f := strings.Split(h, "$") // "", "7", iterations, salt, hash
		if len(f) != 5 || f[1] != "7" {
			t.Fatalf("line %q is not a $7$ hash", l)
		}
		it, _ := strconv.Atoi(f[2])
		salt, err1 := base64.StdEncoding.DecodeString(f[3])
		want, err2 := base64.StdEncoding.DecodeString(f[4])
		if err1 != nil || err2 != nil || len(salt) != 12 || len(want) != 64 {
			t.Fatalf("line %q: bad salt or hash encoding", l)
		}
		got, err := pbkdf2.Key(sha512.New, secrets[user], salt, it, 64)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("user %s: hash does not verify against its secret", user)
		}
	}
	acl, err := os.ReadFile(filepath.Join(out, "acl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"user backend\ntopic readwrite acme/firmcast/#", "pattern write acme/firmcast/v1/dev/%u/report", "pattern read acme/firmcast/v1/dev/%u/notice"} {
		if !strings.Contains(string(acl), want) {
			t.Errorf("acl lacks %q:\n%s", want, acl)
		}
	}
	if strings.Contains(string(acl), "dev1") || strings.Contains(string(acl), "dev2") {
		t.Errorf("acl names devices; it must not grow with the fleet:\n%s", acl)
	}
	conf, err := os.ReadFile(filepath.Join(out, "firmcast.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"allow_anonymous false", "password_file " + filepath.Join(out, "passwd"), "set_tcp_nodelay true", "max_queued_messages 1000", "queue_qos0_messages false"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("firmcast.conf lacks %q", want)
		}
	}
}

func TestMosquittoConfigCmdErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no out", []string{"--backend-secret", "b"}, "--out is required"},
		{"no accounts", []string{"--out", dir}, "no accounts"},
		{"no backend", []string{"--out", dir, "--device", "dev1:s1"}, "no backend account"},
		{"bad device flag", []string{"--out", dir, "--backend-secret", "b", "--device", "dev1"}, "want ID:SECRET"},
		{"bad device id", []string{"--out", dir, "--backend-secret", "b", "--device", "dev+1:s1"}, "dev+1"},
		{"bad root", []string{"--out", dir, "--backend-secret", "b", "--root", "a/#"}, "--root"},
		{"missing file", []string{"--out", dir, "--credentials", filepath.Join(dir, "nope")}, "--credentials"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := runBrokerCmd(t, append([]string{"broker", "mosquitto-config"}, c.args...)...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s1") && c.name == "bad device id" {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}
