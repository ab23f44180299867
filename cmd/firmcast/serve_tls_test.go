package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPKI is a CA and what it signed, as PEM files in a directory.
type testPKI struct {
	dir           string
	caCert, caKey string
	ca            *x509.Certificate
	key           *ecdsa.PrivateKey
	serial        int64
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.key, p.serial = k, 1
	p.caCert, p.caKey = p.write(t, name+"-ca", der, k)
	return p
}

func (p *testPKI) write(t *testing.T, name string, der []byte, k *ecdsa.PrivateKey) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+".key")
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// issue signs a server certificate for 127.0.0.1 (server) or a client
// certificate, and returns its PEM files.
func (p *testPKI) issue(t *testing.T, name string, server bool) (certPath, keyPath string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name, der, k)
}

// recordingProxy forwards TCP connections to target and keeps every byte
// the client sent: what an eavesdropper on the network sees.
type recordingProxy struct {
	ln  net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
}

func startRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				go io.Copy(c, s)
				io.Copy(io.MultiWriter(s, p), c)
			}()
		}
	}()
	return p
}

func (p *recordingProxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.Write(b)
}

func (p *recordingProxy) seen() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// startServeHTTP runs `serve` (embedded brokers, publisher) with the
// given extra publisher options, its HTTP API on a free port, and returns
// the API's host:port.
func startServeHTTP(t *testing.T, po publisherOptions) string {
	t.Helper()
	po.httpListen = "127.0.0.1:0"
	ready := make(chan string, 1)
	o := &serveOptions{
		mqttListen: "127.0.0.1:0", natsListen: "127.0.0.1:0", dataDir: t.TempDir(), root: "fctls" + randomSuffix(t),
		pub: po, onReady: func(_, _, h string) { ready <- h },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, o) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case h := <-ready:
		return strings.TrimPrefix(strings.TrimPrefix(h, "https://"), "http://")
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("serve exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve not ready")
	}
	return ""
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return strings.ToLower(big.NewInt(0).SetBytes(b).Text(36))
}

// TestHTTPAPIOverTLS is the eavesdropping and impersonation attack on the
// HTTP API: an observer of the network sees API keys and device secrets
// only when the API speaks plain HTTP; with --http-tls-cert the CLI
// verifies the server (--ca) and refuses a server that presents a
// certificate of another CA, and a plain-HTTP request to the TLS port
// fails.
func TestHTTPAPIOverTLS(t *testing.T) {
	const key = "fk-tls-test-admin-key-0123456789abcdef"
	// Plain HTTP: the key crosses the wire in clear.
	plain := startServeHTTP(t, publisherOptions{apiKey: key})
	spy := startRecordingProxy(t, plain)
	if out, err := runFirmcast(t, "device", "list", "--server", "http://"+spy.ln.Addr().String(), "--api-key", key); err != nil {
		t.Fatalf("device list over plain HTTP: %v %s", err, out)
	}
	if !strings.Contains(spy.seen(), key) {
		t.Fatal("the recording proxy did not see the API key of a plain-HTTP request: the probe is broken")
	}

	pki := newTestPKI(t, "firmcast-test")
	cert, ckey := pki.issue(t, "server", true)
	addr := startServeHTTP(t, publisherOptions{apiKey: key, httpCert: cert, httpKey: ckey})
	spy = startRecordingProxy(t, addr)
	url := "https://" + spy.ln.Addr().String()
	if out, err := runFirmcast(t, "device", "list", "--server", url, "--api-key", key, "--ca", pki.caCert); err != nil {
		t.Fatalf("device list over TLS with --ca: %v %s", err, out)
	}
	if strings.Contains(spy.seen(), key) {
		t.Fatal("the API key crossed the network in clear over TLS")
	}
	// Without --ca the server's certificate does not verify.
	if _, err := runFirmcast(t, "device", "list", "--server", url, "--api-key", key); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("device list without --ca: %v, want a certificate error", err)
	}
	// A server with a certificate of another CA (a man in the middle).
	evil := newTestPKI(t, "evil")
	ecert, ekey := evil.issue(t, "evil-server", true)
	mitm := startServeHTTP(t, publisherOptions{apiKey: key, httpCert: ecert, httpKey: ekey})
	if _, err := runFirmcast(t, "device", "list", "--server", "https://"+mitm, "--api-key", key, "--ca", pki.caCert); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("device list against another CA's server: %v, want a certificate error", err)
	}
	// Plain HTTP to the TLS port.
	if _, err := runFirmcast(t, "device", "list", "--server", "http://"+addr, "--api-key", key); err == nil {
		t.Fatal("a plain-HTTP request to the HTTPS API succeeded")
	}
}

// TestHTTPAPIClientCertificates: with --http-client-ca, a client without a
// certificate of that CA is refused at the handshake, even with a valid
// API key.
func TestHTTPAPIClientCertificates(t *testing.T) {
	const key = "fk-mtls-test-admin-key-0123456789abcdef"
	pki := newTestPKI(t, "firmcast-test")
	cert, ckey := pki.issue(t, "server", true)
	addr := startServeHTTP(t, publisherOptions{apiKey: key, httpCert: cert, httpKey: ckey, httpClientCA: pki.caCert})
	url := "https://" + addr
	if _, err := runFirmcast(t, "device", "list", "--server", url, "--api-key", key, "--ca", pki.caCert); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	other := newTestPKI(t, "other")
	ocert, okey := other.issue(t, "stranger", false)
	if _, err := runFirmcast(t, "device", "list", "--server", url, "--api-key", key, "--ca", pki.caCert, "--client-cert", ocert, "--client-key", okey); err == nil {
		t.Fatal("a client with another CA's certificate was served")
	}
	ccert, cckey := pki.issue(t, "operator", false)
	if out, err := runFirmcast(t, "device", "list", "--server", url, "--api-key", key, "--ca", pki.caCert, "--client-cert", ccert, "--client-key", cckey); err != nil {
		t.Fatalf("client with a certificate of the CA: %v %s", err, out)
	}
}

func TestServeTLSOptions(t *testing.T) {
	for _, c := range []struct {
		addr string
		want bool
	}{{"127.0.0.1:8080", true}, {"localhost:80", true}, {"[::1]:8080", true}, {"0.0.0.0:8080", false}, {":8080", false}, {"10.0.0.1:8080", false}, {"nonsense", false}} {
		if got := loopback(c.addr); got != c.want {
			t.Errorf("loopback(%q) = %v, want %v", c.addr, got, c.want)
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not pem"), 0o600)
	for _, c := range []struct{ cert, key, ca string }{{"x", "", ""}, {"", "x", ""}, {"", "", bad}, {bad, bad, ""}} {
		if _, err := httpTLS(c.cert, c.key, c.ca); err == nil {
			t.Errorf("httpTLS(%q, %q, %q) accepted", c.cert, c.key, c.ca)
		}
	}
}
