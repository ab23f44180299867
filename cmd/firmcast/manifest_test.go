package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/schemas/suit"
)

// runFirmcast runs the CLI in-process and returns stdout and the error main
// would print (exit status 1 when non-nil).
func runFirmcast(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// mustFirmcast runs the CLI as runFirmcast does and fails the test, with
// the output, when the command fails.
func mustFirmcast(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runFirmcast(t, args...)
	if err != nil {
		t.Fatalf("firmcast %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

const (
	vendorUUID = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
	classUUID  = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
)

func TestKeysGenManifestCreateInspect(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "fw.bin")
	image := bytes.Repeat([]byte("firmware"), 5000)
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, alg := range []string{"es256", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			key := filepath.Join(dir, alg)
			if _, err := runFirmcast(t, "keys", "gen", "--alg", alg, "--out", key); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(key + ".pem"); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("private key file: %v %v", fi, err)
			}
			if _, err := runFirmcast(t, "keys", "gen", "--alg", alg, "--out", key); err == nil || !strings.Contains(err.Error(), "exists") {
				t.Fatalf("second gen: %v, want refusal to overwrite", err)
			}
			out := filepath.Join(dir, alg+".suit")
			if _, err := runFirmcast(t, "manifest", "create", "--image", img, "--vendor-id", vendorUUID,
				"--class-id", classUUID, "--seq", "12", "--uri", "https://a.example/fw", "--uri", "https://b.example/fw",
				"--component", "app", "--key", key+".pem", "--out", out, "--chunk-size", "4096", "--use-before", "2040-01-01T00:00:00Z"); err != nil {
				t.Fatal(err)
			}
			stdout, err := runFirmcast(t, "manifest", "inspect", out, "--key", key+".pub.pem", "--json")
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("%v: %s", err, stdout)
			}
			for field, want := range map[string]any{
				"sequence_number": 12.0, "vendor_id": vendorUUID, "class_id": classUUID,
				"image_size": float64(len(image)), "verified": true, "chunk_size": 4096.0,
				"use_before": "2040-01-01T00:00:00Z",
			} {
				if got[field] != want {
					t.Errorf("%s = %v, want %v", field, got[field], want)
				}
			}
			for _, field := range []string{"components", "image_digest", "uris", "signatures", "chunk_table_digest"} {
				if _, ok := got[field]; !ok {
					t.Errorf("JSON has no %q", field)
				}
			}
			if u := got["uris"].([]any); len(u) != 2 || u[0] != "https://a.example/fw" {
				t.Errorf("uris %v", u)
			}
			if s := got["signatures"].([]any); len(s) != 1 || s[0].(map[string]any)["verified"] != true {
				t.Errorf("signatures %v", s)
			}

			// The device's code path verifies the same file.
			env, _ := os.ReadFile(out)
			pubPEM, _ := os.ReadFile(key + ".pub.pem")
			pub, err := suit.ParsePublicKeyPEM(pubPEM)
			if err != nil {
				t.Fatal(err)
			}
			if m, err := suit.Verify(env, suit.TrustAnchors{pub}); err != nil || m.Seq != 12 {
				t.Fatalf("suit.Verify: %v", err)
			}

			// Readable form.
			text, err := runFirmcast(t, "manifest", "inspect", out, "--key", key+".pub.pem")
			if err != nil || !strings.Contains(text, ": verified") || !strings.Contains(text, vendorUUID) {
				t.Fatalf("inspect: %v\n%s", err, text)
			}
			// Without a key: decoded, not verified, no error.
			stdout, err = runFirmcast(t, "manifest", "inspect", out, "--json")
			if err != nil || !strings.Contains(stdout, `"verified": false`) {
				t.Fatalf("inspect without key: %v\n%s", err, stdout)
			}
		})
	}
	// Wrong key: exit 1 with a one-line error naming what failed.
	_, err := runFirmcast(t, "manifest", "inspect", filepath.Join(dir, "es256.suit"), "--key", filepath.Join(dir, "ed25519.pub.pem"))
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "verification failed") ||
		!strings.Contains(err.Error(), "no signature by a trusted key") {
		t.Fatalf("wrong key: %v", err)
	}
	// Fully specified algorithm.
	esp := filepath.Join(dir, "esp.suit")
	if _, err := runFirmcast(t, "manifest", "create", "--image", img, "--vendor-id", vendorUUID, "--class-id", classUUID,
		"--seq", "1", "--key", filepath.Join(dir, "es256.pem"), "--cose-alg", "esp256", "--out", esp); err != nil {
		t.Fatal(err)
	}
	if out, err := runFirmcast(t, "manifest", "inspect", esp, "--key", filepath.Join(dir, "es256.pub.pem"), "--json"); err != nil ||
		!strings.Contains(out, `"alg": "ESP256"`) {
		t.Fatalf("esp256: %v\n%s", err, out)
	}
	// Several keys: one trusted is enough.
	if _, err := runFirmcast(t, "manifest", "inspect", filepath.Join(dir, "es256.suit"),
		"--key", filepath.Join(dir, "ed25519.pub.pem"), "--key", filepath.Join(dir, "es256.pub.pem")); err != nil {
		t.Fatalf("two keys: %v", err)
	}
}

func TestManifestInspectVector(t *testing.T) {
	vec := "../../schemas/suit/testdata/"
	stdout, err := runFirmcast(t, "manifest", "inspect", vec+"suit_manifest_exp1.suit", "--key", vec+"trust_anchor_secp256r1_pub.pem", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, `"verified": true`) || !strings.Contains(stdout, "http://example.com/file.bin") {
		t.Fatalf("vector inspect:\n%s", stdout)
	}
}

func TestManifestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "fw.bin")
	os.WriteFile(img, []byte("x"), 0o644)
	key := filepath.Join(dir, "k")
	if _, err := runFirmcast(t, "keys", "gen", "--out", key); err != nil {
		t.Fatal(err)
	}
	trunc := filepath.Join(dir, "trunc.suit")
	env, _ := os.ReadFile("../../schemas/suit/testdata/suit_manifest_exp0.suit")
	os.WriteFile(trunc, env[:len(env)-3], 0o644)
	base := []string{"manifest", "create", "--image", img, "--vendor-id", vendorUUID, "--class-id", classUUID, "--seq", "1", "--key", key + ".pem", "--out", filepath.Join(dir, "o.suit")}
	with := func(flag, val string) []string {
		a := append([]string(nil), base...)
		for i := range a {
			if a[i] == flag {
				a[i+1] = val
			}
		}
		return a
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{with("--vendor-id", "not-a-uuid"), "--vendor-id"},
		{with("--class-id", "1234"), "--class-id"},
		{with("--key", filepath.Join(dir, "missing.pem")), "--key"},
		{with("--key", key+".pub.pem"), "--key"},
		{with("--image", filepath.Join(dir, "none")), "--image"},
		{base[:len(base)-2], "--out is required"},
		{[]string{"keys", "gen", "--alg", "rsa", "--out", filepath.Join(dir, "r")}, "--alg"},
		{append(with("--seq", "2"), "--cose-alg", "ed25519"), "--key"}, // ES key, EdDSA alg
		{append(with("--seq", "2"), "--cose-alg", "rs256"), "--cose-alg"},
		{[]string{"manifest", "inspect", trunc, "--key", key + ".pub.pem"}, "truncated"},
		{[]string{"manifest", "inspect", trunc}, "truncated"},
	} {
		_, err := runFirmcast(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: got %v, want a one-line error naming %q", tc.args, err, tc.want)
		}
	}
}
