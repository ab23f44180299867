package publisher

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRunOnce: a second Run returns ErrRunning at once (it used to panic
// on closing Ready twice), and Done is closed when the first returns.
func TestRunOnce(t *testing.T) {
	e := newEnv(t)
	p, stop := e.start(nil)
	if err := p.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
	select {
	case <-p.Done():
		t.Fatal("Done closed while Run runs")
	default:
	}
	stop()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after Run returned")
	}
}

// TestClose: Close stops Run and waits for it (Run returns
// context.Canceled, Done is closed); Run after Close returns ErrRunning;
// Close of a publisher that never ran closes Done; Close twice is fine.
func TestClose(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg
	cfg.Transport = e.dial("pub-close"+randomID("t")[2:10], true)
	p, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- p.Run(context.Background()) }()
	select {
	case <-p.Ready():
	case err := <-ran:
		t.Fatalf("Run: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// closed closes p and checks that it is done for good.
	closed := func(p *Publisher, what string) {
		t.Helper()
		if err := p.Close(ctx); err != nil {
			t.Fatalf("Close %s: %v", what, err)
		}
		select {
		case <-p.Done():
		default:
			t.Fatalf("Done open after Close %s returned", what)
		}
		if err := p.Run(context.Background()); !errors.Is(err, ErrRunning) {
			t.Fatalf("Run after Close %s: %v, want ErrRunning", what, err)
		}
	}
	closed(p, "of a running publisher")
	if err := <-ran; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run stopped by Close: %v, want context.Canceled", err)
	}
	closed(p, "again")

	idle, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	closed(idle, "before Run")
}
