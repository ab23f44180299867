package stack_test

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/internal/brokerproc"
	"github.com/firmcast/firmcast/internal/testutil"
)

// BenchmarkMosquittoReload measures what one SIGHUP reload of a password
// file of 2,001 users costs mosquitto (a process of the benchmark's own)
// with none and with 2,000 of them connected: mosquitto checks every
// connected client's password again, on its one thread. It reports
// mosquitto's CPU per reload and per connected client (cpu-µs/client),
// the figure behind stack.Config.MosquittoReloadGap. A reload is over
// when a client that connects after the signal is accepted (mosquitto
// serves it only after the reload).
func BenchmarkMosquittoReload(b *testing.B) {
	for _, c := range []int{0, 2000} {
		b.Run(fmt.Sprintf("connected=%d", c), func(b *testing.B) { benchReload(b, c) })
	}
}

func benchReload(b *testing.B, connected int) {
	const n, secret = 2000, "bench-secret-0123456789abcdef01"
	dir := b.TempDir()
	var lines []string
	for i := 0; i <= n; i++ {
		l, err := broker.MosquittoPasswordLine(fmt.Sprintf("d%d", i), secret, broker.MosquittoIterations, rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		lines = append(lines, l)
	}
	pw := filepath.Join(dir, "passwd")
	if err := broker.WriteMosquittoPasswd(pw, lines); err != nil {
		b.Fatal(err)
	}
	mq := testutil.StartMosquitto(b, "allow_anonymous false\npassword_file "+pw+"\n")
	connect := func(id string) *testutil.RawMQTT {
		c, err := testutil.ConnectRawMQTT(b, mq.URL(), nil, &paho.Connect{ClientID: id, Username: id, Password: []byte(secret)})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	for i := 0; i < connected; i++ {
		connect(fmt.Sprintf("d%d", i))
	}
	cpu0, err := brokerproc.ProcCPU(mq.PID())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := broker.ReloadMosquitto(mq.PID()); err != nil {
			b.Fatal(err)
		}
		c := connect(fmt.Sprintf("d%d", n))
		c.Abort()
		<-c.Lost()
	}
	b.StopTimer()
	cpu1, _ := brokerproc.ProcCPU(mq.PID())
	per := (cpu1 - cpu0) / float64(b.N)
	b.ReportMetric(per, "cpu-s/reload")
	if connected > 0 {
		b.ReportMetric(per/float64(connected)*1e6, "cpu-µs/client")
	}
}
