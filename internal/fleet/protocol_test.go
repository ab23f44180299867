package fleet

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/firmcast/firmcast/deviceagent"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
)

// Deployed agents keep working (issue 14 item 6): with coded repair on,
// agents of the previous delivery protocol (plain chunk table, repair by
// chunks; simulated by deviceagent.Config.DeliveryProtocol 1) complete in
// the same campaign, under loss, as agents that take the coded table and
// parity. The manifest signs both tables' digests; an old agent takes
// only the plain one (a coded table would fail its digest check and its
// download), so every device confirming v2 shows each was answered with
// the table of its protocol and repaired by the path it speaks.
func TestOldAgentsInCodedCampaign(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const devices = 12
	old := func(id string) bool {
		i := strings.LastIndexByte(id, '-')
		n, err := strconv.Atoi(id[i+1:])
		return err == nil && n%3 == 0
	}
	sum, err := Run(ctx, Config{
		Devices: devices, ImageSize: 256 << 10, ChunkSize: 4096, Dir: t.TempDir(), Seed: 3, Logger: testLogger(t),
		Phases: []uint8{100}, Loss: 0.05,
		Publisher: func(c *publisher.Config) {
			c.CodedRepair = true
			// Small blocks: a decode under -race costs K^3.
			c.CodedBlock, c.CodedParity = 16, 8
		},
		Agent: func(c *deviceagent.Config) {
			if old(c.DeviceID) {
				c.DeliveryProtocol = schemas.ProtocolPlain
			}
		},
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("summary: %+v", sum)
	if sum.Outcome != "completed" || sum.ConfirmedV2 != devices {
		t.Fatalf("outcome %s, %d/%d confirmed on v2, problems %+v", sum.Outcome, sum.ConfirmedV2, devices, sum.Problems)
	}
}
