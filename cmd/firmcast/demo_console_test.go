package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/firmcast/firmcast/publisher"
)

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDemoConsoleStaysUp runs `demo --console`: it prints the console's
// URL and a read-only key, runs the campaign, and keeps the console up
// until interrupted.
func TestDemoConsoleStaysUp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := newRootCmd()
	var out, errb lockedBuffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs([]string{"demo", "--console", "--devices", "5", "--image-size", "16KiB", "--dir", t.TempDir()})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	re := regexp.MustCompile(`console: (http://\S+/) \(sign in with the read-only key (\S+)\)`)
	var url, key string
	deadline := time.After(2 * time.Minute)
	for url == "" || !strings.Contains(errb.String(), "stays up") {
		if m := re.FindStringSubmatch(errb.String()); m != nil {
			url, key = m[1], m[2]
		}
		select {
		case err := <-done:
			t.Fatalf("demo ended: %v\n%s\n%s", err, errb.String(), out.String())
		case <-deadline:
			t.Fatalf("no console held up in 2 minutes:\n%s", errb.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	get := func(path, key string) (int, string) {
		req, _ := http.NewRequest("GET", url+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get("", ""); code != 200 || !strings.Contains(body, "firmcast console") {
		t.Errorf("console page: %d", code)
	}
	code, body := get("api/v1/campaigns", key)
	var cs []publisher.Status
	if code != 200 || json.Unmarshal([]byte(body), &cs) != nil || len(cs) != 1 || cs[0].State != publisher.CampaignCompleted {
		t.Errorf("campaigns with the demo's key: %d %s", code, body)
	}
	req, _ := http.NewRequest("POST", url+"api/v1/apikeys", strings.NewReader(`{"name":"x","scopes":["admin"]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("admin call with the demo's read-only key: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo after interrupt: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("demo did not stop when interrupted")
	}
}
