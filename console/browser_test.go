package console_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/firmcast/firmcast/internal/fleet"
	"github.com/firmcast/firmcast/internal/stack"
	"github.com/firmcast/firmcast/internal/stacktest"
	"github.com/firmcast/firmcast/internal/testutil"
	"github.com/firmcast/firmcast/publisher"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// specFor is a campaign of the image with hex digest d to the fleet,
// started at once.
func specFor(t *testing.T, d string) schemas.CampaignSpec {
	t.Helper()
	b, err := hex.DecodeString(d)
	if err != nil {
		t.Fatal(err)
	}
	return schemas.CampaignSpec{Image: b, Class: "demo", Start: true, Name: "to abort"}
}

// The browser tests drive Debian's chromium (apt-get install chromium;
// .ci/run installs it) with chromedp against a whole in-process stack
// and a fleet of simulated devices.

const fleetSize = 50

// consoleEnv is a running stack with a connected fleet and a browser.
type consoleEnv struct {
	st     *stack.Stack
	fl     *fleet.Fleet
	url    string
	images map[string]string // name -> digest
	keys   map[string]string // "read", "campaign" -> token
	keyIDs map[string]string
}

func newConsoleEnv(t *testing.T) *consoleEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	key, err := suit.GenerateKey("es256", nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := suit.NewKeySigner(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	vendor, class := make([]byte, 16), make([]byte, 16)
	class[0] = 1
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("CONSOLE_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	topics := testutil.UniqueTopics(t)
	st := stacktest.Start(t, stack.Config{
		Topics: topics, HTTPListen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0", NATSListen: "127.0.0.1:0", Open: true, Logger: log,
		Publisher: publisher.Config{
			Signer: publisher.SUITSigner(signer), VendorID: vendor, ClassID: class, ChunkSize: 4096,
			TickInterval: 100 * time.Millisecond, StartWindow: 200 * time.Millisecond, WaveInterval: 2 * time.Second,
			RepairWindow: 200 * time.Millisecond, MinPhaseDevices: 3, Logger: log,
			// Paced, so that a campaign is still downloading when the
			// abort test aborts it: 64 KiB take 4 s.
			MaxBytesPerSecond: 16 << 10,
		},
	})
	images := map[string][]byte{"v1": fleet.Image(1, "v1", 16<<10), "v2": fleet.Image(1, "v2", 16<<10), "v3": fleet.Image(1, "v3", 64<<10)}
	fl, err := fleet.NewFleet(ctx, fleet.FleetConfig{
		Devices: fleetSize, Prefix: "web" + testutil.UniqueRoot(t)[3:9], Class: "demo", Dir: t.TempDir(), MQTTURL: st.MQTTURL, Topics: topics,
		VendorID: vendor, ClassID: class, Trust: suit.TrustAnchors{key.Public()}, Factory: images["v1"], MaxImage: 64 << 10,
		Logger: log, MemFlash: true,
		Register: func(ctx context.Context, id, secret string) error { return st.RegisterDevice(ctx, id, "demo", secret) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fl.Close)
	t.Cleanup(fl.Stop)
	// The agents live as long as the context Run is given: the test's.
	if err := fl.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	e := &consoleEnv{st: st, fl: fl, url: st.HTTPURL + "/", images: map[string]string{}, keys: map[string]string{}, keyIDs: map[string]string{}}
	for _, name := range []string{"v2", "v3"} {
		img, _, err := st.Pub.UploadImageWith(ctx, st.Admin, publisher.ImageUpload{Name: "firmware-" + name, Version: name[1:] + ".0.0"}, strings.NewReader(string(images[name])))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(images[name])
		if img.Digest != hex.EncodeToString(sum[:]) {
			t.Fatal("digest")
		}
		e.images[name] = img.Digest
	}
	for _, sc := range []publisher.Scope{publisher.ScopeRead, publisher.ScopeCampaign} {
		tok, k, err := st.Pub.CreateAPIKey(ctx, st.Admin, "console-"+string(sc), []publisher.Scope{sc})
		if err != nil {
			t.Fatal(err)
		}
		e.keys[string(sc)], e.keyIDs[string(sc)] = tok, k.ID
	}
	return e
}

// newBrowser starts headless chromium; the returned context drives it.
func newBrowser(t testing.TB) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the console's browser tests need Debian's chromium (apt-get install chromium): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1000),
		chromedp.UserDataDir(t.TempDir()), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		acancel()
	})
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// run runs actions with a deadline, failing the test with what.
func run(t testing.TB, ctx context.Context, d time.Duration, what string, actions ...chromedp.Action) {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := chromedp.Run(rctx, actions...); err != nil {
		var page string
		_ = chromedp.Run(ctx, chromedp.Text("body", &page, chromedp.ByQuery))
		t.Fatalf("%s: %v\npage:\n%s", what, err, page)
	}
}

// signIn loads the console and signs in with key.
func signIn(t testing.TB, ctx context.Context, url, key string) {
	t.Helper()
	run(t, ctx, 20*time.Second, "sign in",
		chromedp.Navigate(url),
		chromedp.WaitVisible("#key", chromedp.ByID),
		chromedp.SendKeys("#key", key, chromedp.ByID),
		chromedp.Click("#signin-form button[type=submit]", chromedp.ByQuery),
		chromedp.WaitVisible("#nav", chromedp.ByID))
}

// waitJS polls a JavaScript condition until it holds.
func waitJS(expr string) chromedp.Action {
	return chromedp.Poll(expr, nil, chromedp.WithPollingInterval(100*time.Millisecond))
}

// screenshot saves the page into FIRMCAST_SCREENSHOTS (docs/img when
// refreshing the README's pictures), else into a temp dir.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("FIRMCAST_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	var png []byte
	run(t, ctx, 20*time.Second, "screenshot", chromedp.CaptureScreenshot(&png)) // the viewport, as PNG
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func countOf(ctx context.Context, state string) (int, error) {
	var n int
	err := chromedp.Run(ctx, chromedp.Evaluate(`(() => { const e = document.getElementById('count-`+state+`'); return e ? Number(e.textContent) : -1; })()`, &n))
	return n, err
}

func TestConsoleInBrowser(t *testing.T) {
	e := newConsoleEnv(t)
	ctx := newBrowser(t)

	t.Run("bad key refused with a clear message", func(t *testing.T) {
		var msg string
		run(t, ctx, 20*time.Second, "bad key",
			chromedp.Navigate(e.url),
			chromedp.WaitVisible("#key", chromedp.ByID),
			chromedp.SendKeys("#key", "fck_000000000000_not-a-key", chromedp.ByID),
			chromedp.Click("#signin-form button[type=submit]", chromedp.ByQuery),
			waitJS(`document.getElementById('signin-error').textContent !== ''`),
			chromedp.Text("#signin-error", &msg, chromedp.ByID))
		if !strings.Contains(msg, "Sign-in refused") || !strings.Contains(msg, "unknown API key") {
			t.Errorf("message %q, want a sign-in refusal naming the unknown key", msg)
		}
		var stored string
		run(t, ctx, 5*time.Second, "storage", chromedp.Evaluate(`JSON.stringify(localStorage)+JSON.stringify(sessionStorage)+document.cookie`, &stored))
		if strings.Contains(stored, "fck_") {
			t.Errorf("the key is kept in the browser: %s", stored)
		}
	})

	var campaign string
	t.Run("create a campaign and watch it complete live", func(t *testing.T) {
		signIn(t, ctx, e.url, e.keys["campaign"])
		run(t, ctx, 20*time.Second, "create form",
			chromedp.Evaluate(`window.fcNoReload = true`, nil),
			chromedp.Click("#create summary", chromedp.ByQuery),
			chromedp.WaitVisible("#c-image", chromedp.ByID),
			chromedp.SetValue("#c-image", e.images["v2"], chromedp.ByID),
			chromedp.SendKeys("#c-name", "console rollout", chromedp.ByID),
			chromedp.SendKeys("#c-class", "demo", chromedp.ByID),
			chromedp.SetValue("#c-phases", "20,100", chromedp.ByID),
			chromedp.Click("#c-submit", chromedp.ByID),
			waitJS(`location.hash.startsWith('#/campaign/')`),
			chromedp.Evaluate(`location.hash.slice('#/campaign/'.length)`, &campaign),
			chromedp.WaitVisible("#count-confirmed", chromedp.ByID))
		var states []string
		deadline := time.Now().Add(90 * time.Second)
		for {
			var state string
			run(t, ctx, 10*time.Second, "campaign state", chromedp.AttributeValue("#camp-state", "data-state", &state, nil, chromedp.ByID))
			if len(states) == 0 || states[len(states)-1] != state {
				states = append(states, state)
			}
			n, err := countOf(ctx, "confirmed")
			if err != nil {
				t.Fatal(err)
			}
			if state == "completed" && n == fleetSize {
				break
			}
			if time.Now().After(deadline) {
				st, err := e.st.Pub.CampaignStatus(context.Background(), campaign)
				t.Fatalf("campaign %s not completed in the page: state %s, %d confirmed; server: %+v %v", campaign, state, n, st, err)
			}
			time.Sleep(200 * time.Millisecond) // polling the page, not standing in for a condition
		}
		var kept bool
		run(t, ctx, 5*time.Second, "no reload", chromedp.Evaluate(`window.fcNoReload === true`, &kept))
		if !kept {
			t.Error("the page reloaded")
		}
		if states[0] != "running" {
			t.Errorf("page states %v, want running first", states)
		}
		st, err := e.st.Pub.CampaignStatus(context.Background(), campaign)
		if err != nil || st.State != publisher.CampaignCompleted || st.Counts["confirmed"] != fleetSize {
			t.Errorf("server status %+v %v", st, err)
		}
		run(t, ctx, 10*time.Second, "every device in the table, confirmed",
			waitJS(fmt.Sprintf(`document.querySelectorAll('#devices tbody tr').length === %d && document.querySelectorAll('#devices .state-confirmed').length === %d`, fleetSize, fleetSize)))
		screenshot(t, ctx, "console-campaign.png")
	})

	t.Run("abort from the console", func(t *testing.T) {
		c, err := e.st.Pub.CreateCampaign(context.Background(), e.st.Admin, specFor(t, e.images["v3"]))
		if err != nil {
			t.Fatal(err)
		}
		run(t, ctx, 30*time.Second, "campaign page",
			chromedp.Navigate(e.url+"#/campaign/"+c.ID),
			chromedp.WaitVisible("#action-abort", chromedp.ByID),
			waitJS(`Number(document.getElementById('count-downloading').textContent) + Number(document.getElementById('count-pending').textContent) > 0`),
			chromedp.Click("#action-abort", chromedp.ByID),
			chromedp.WaitVisible("#confirm-ok", chromedp.ByID),
			chromedp.Click("#confirm-ok", chromedp.ByID),
			waitJS(`document.getElementById('camp-state').dataset.state === 'aborted'`))
		if n, err := countOf(ctx, "confirmed"); err != nil || n == fleetSize {
			t.Errorf("confirmed %d (%v) after the abort, want the rollout stopped", n, err)
		}
		screenshot(t, ctx, "console-aborted.png")
		st, _ := e.st.Pub.CampaignStatus(context.Background(), c.ID)
		if st.State != publisher.CampaignAborted || !strings.Contains(st.Reason, "console-campaign") {
			t.Errorf("server: %s (%s), want aborted by the console's key", st.State, st.Reason)
		}
	})

	t.Run("read-only key sees no actions and a forged action is refused", func(t *testing.T) {
		run(t, ctx, 10*time.Second, "sign out", chromedp.Click("#signout", chromedp.ByID), chromedp.WaitVisible("#key", chromedp.ByID))
		signIn(t, ctx, e.url, e.keys["read"])
		var n int
		run(t, ctx, 20*time.Second, "campaigns",
			chromedp.WaitVisible("#campaigns", chromedp.ByID),
			chromedp.Evaluate(`document.querySelectorAll('#create').length`, &n))
		if n != 0 {
			t.Error("a read-only key is offered the campaign form")
		}
		run(t, ctx, 20*time.Second, "campaign page",
			chromedp.Navigate(e.url+"#/campaign/"+campaign),
			chromedp.WaitVisible("#count-confirmed", chromedp.ByID),
			chromedp.Evaluate(`document.querySelectorAll('[id^="action-"]').length`, &n))
		if n != 0 {
			t.Errorf("a read-only key sees %d action buttons", n)
		}
		var codes string
		run(t, ctx, 20*time.Second, "forged actions", chromedp.Evaluate(fmt.Sprintf(`(async () => {
			const s = await (await fetch('/api/v1/session')).json();
			const a = await fetch('/api/v1/campaigns/%[1]s/pause', {method: 'POST', headers: {'X-CSRF-Token': s.csrf}});
			const b = await fetch('/api/v1/campaigns/%[1]s/abort', {method: 'POST'});
			return a.status + ',' + b.status;
		})()`, campaign), &codes, func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
		if codes != "403,403" {
			t.Errorf("forged pause with the CSRF token and abort without: %s, want 403,403", codes)
		}
	})

	t.Run("revoking the key ends the session and its stream", func(t *testing.T) {
		if err := e.st.Pub.RevokeAPIKey(context.Background(), e.st.Admin, e.keyIDs["read"]); err != nil {
			t.Fatal(err)
		}
		var msg string
		run(t, ctx, 20*time.Second, "signed out",
			chromedp.WaitVisible("#key", chromedp.ByID),
			chromedp.Text("#signin-error", &msg, chromedp.ByID))
		if !strings.Contains(msg, "revoked") {
			t.Errorf("message %q, want it to say the key was revoked", msg)
		}
	})
}
