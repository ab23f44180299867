package broker_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/testutil"
)

// selfSigned returns a server config for 127.0.0.1 and a client config
// trusting it.
func selfSigned(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "firmcast-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// TestTLSURLs: mqtts:// and tls:// (NATS) connect over TLS and carry
// messages; a client that does not trust the server's certificate fails.
func TestTLSURLs(t *testing.T) {
	srvTLS, cliTLS := selfSigned(t)
	for _, c := range []struct {
		name, scheme string
		url          func(t *testing.T) string
	}{
		{"mqtts", "mqtts://", func(t *testing.T) string { return testutil.StartMochi(t, broker.MQTTServerConfig{TLS: srvTLS}).URL() }},
		{"nats-tls", "tls://", func(t *testing.T) string { return testutil.StartNATS(t, broker.NATSServerConfig{TLS: srvTLS}).URL() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			url := c.url(t)
			if !bytes.HasPrefix([]byte(url), []byte(c.scheme)) {
				t.Fatalf("server URL %q, want %s", url, c.scheme)
			}
			topics := testutil.UniqueTopics(t)
			pub := testutil.Dial(t, broker.Config{URL: url, Topics: topics, TLS: cliTLS})
			sub := testutil.Dial(t, broker.Config{URL: url, Topics: topics, TLS: cliTLS})
			rep, _ := topics.Report("dev1")
			ch, _ := collect(t, sub, rep, broker.SubscribeOptions{Family: broker.FamilyReport})
			publish(t, pub, rep, []byte("over-tls"), broker.PublishOptions{Family: broker.FamilyReport})
			if m := recv(t, ch, "report over TLS"); string(m.Payload) != "over-tls" {
				t.Fatalf("got %q", m.Payload)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if tr, err := broker.Dial(ctx, broker.Config{URL: url, Topics: topics, TLS: &tls.Config{MinVersion: tls.VersionTLS12}}); err == nil {
				_ = tr.Close(ctx)
				t.Fatal("a client that does not trust the certificate connected")
			}
		})
	}
}
