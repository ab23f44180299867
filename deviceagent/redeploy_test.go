package deviceagent

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/firmcast/firmcast/schemas"
)

// TestRedeployFailedImage: an image the bootloader reverted on a device
// is refused before anything is downloaded when a later campaign sends it
// again (failed-before), and installed when a campaign retries failed
// images on purpose.
func TestRedeployFailedImage(t *testing.T) {
	w := memWorld(t)
	v2 := testImage(2, 20000)
	cs := w.serve(v2, nil)
	var healthy atomic.Bool
	dev := w.newDevice("dev-rd", func(c *Config) {
		c.SelfTest = func(context.Context) error {
			if healthy.Load() {
				return nil
			}
			return errors.New("self-test fails")
		}
	})
	dev.start()
	w.notice("camp-a", "dev-rd", false, v2, w.envelope(v2, 2, nil, nil))
	w.waitState("dev-rd", schemas.StateRolledBack, 20*time.Second)
	if a := dev.active(); a.Version != 1 {
		t.Fatalf("active version %d after the rollback, want 1", a.Version)
	}

	// The same bytes again: refused before download.
	before := served(cs)
	w.notice("camp-b", "dev-rd", false, v2, w.envelope(v2, 3, nil, nil))
	r := w.waitReport("dev-rd", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "camp-b" && (r.State == schemas.StateFailed || r.State == schemas.StateConfirmed)
	})
	if r.State != schemas.StateFailed || r.Code != schemas.CodeFailedBefore || !strings.Contains(r.Text, "failed on this device before") {
		t.Fatalf("camp-b ended %s %s: %s", r.State, r.Code, r.Text)
	}
	if n := served(cs) - before; n != 0 {
		t.Errorf("%d chunks served for an image that failed before", n)
	}
	for _, r := range w.reportsOf("dev-rd") {
		if r.Campaign == "camp-b" && r.State == schemas.StateDownloading {
			t.Errorf("camp-b reported downloading: %s", r.Text)
		}
	}

	// A campaign that retries failed images installs it.
	healthy.Store(true)
	n := w.newNotice("camp-c", "dev-rd", v2, w.envelope(v2, 4, nil, nil))
	n.Retry = true
	w.raw("dev-rd", false, w.signNotice(n, w.signer))
	r = w.waitReport("dev-rd", 20*time.Second, func(r schemas.DeviceReport) bool {
		return r.Campaign == "camp-c" && (r.State == schemas.StateFailed || r.State == schemas.StateConfirmed || r.State == schemas.StateRolledBack)
	})
	if r.State != schemas.StateConfirmed || dev.active().Digest != sha256.Sum256(v2) {
		t.Fatalf("camp-c ended %s %s: %s\n%s", r.State, r.Code, r.Text, w.dump("dev-rd"))
	}
}
