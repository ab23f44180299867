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
