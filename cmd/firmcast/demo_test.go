package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/internal/fleet"
)

func TestDemoExitCodes(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		code     int // 0 = no error
		outcome  string
		confirmd int
	}{
		{"all confirmed", []string{"--devices", "10", "--image-size", "64KiB"}, 0, "completed", 10},
		{"encrypted, all confirmed", []string{"--devices", "6", "--image-size", "48KiB", "--encrypt"}, 0, "completed", 6},
		{"encrypted delta, all confirmed", []string{"--devices", "6", "--image-size", "64KiB", "--encrypt", "--delta"}, 0, "completed", 6},
		{"fail rate aborts", []string{"--devices", "20", "--image-size", "32KiB", "--fail-rate", "0.5", "--seed", "7", "--phases", "50,100"}, exitAborted, "aborted", -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"demo", "--json", "--dir", t.TempDir()}, tc.args...)
			out, err := runFirmcast(t, args...)
			code := 0
			if err != nil {
				var ee *exitError
				if !errors.As(err, &ee) {
					t.Fatalf("error without exit code: %v", err)
				}
				code = ee.code
			}
			if code != tc.code {
				t.Fatalf("exit code %d (%v), want %d; output:\n%s", code, err, tc.code, out)
			}
			var sum fleet.Summary
			if err := json.Unmarshal([]byte(out), &sum); err != nil {
				t.Fatalf("--json output: %v\n%s", err, out)
			}
			if sum.Outcome != tc.outcome {
				t.Fatalf("outcome %q, want %q", sum.Outcome, tc.outcome)
			}
			if tc.confirmd >= 0 && sum.ConfirmedV2 != tc.confirmd {
				t.Fatalf("%d confirmed on v2, want %d", sum.ConfirmedV2, tc.confirmd)
			}
			if strings.Contains(tc.name, "delta") && (sum.ViaDelta != tc.confirmd || !sum.Encrypted) {
				t.Fatalf("%d of %d took the delta (encrypted %v)", sum.ViaDelta, tc.confirmd, sum.Encrypted)
			}
			if tc.code == exitAborted && (sum.RolledBack == 0 || sum.FailedBy["boot-failed"] == 0) {
				t.Fatalf("aborted run without rollbacks by reason: %+v", sum)
			}
		})
	}
}

func TestDemoBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "--devices", "0"},
		{"demo", "--image-size", "lots"},
		{"demo", "--fail-rate", "1.5"},
		{"demo", "--broker", "mqtt://127.0.0.1:1883"},
		{"demo", "--phases", "0,100"},
		{"demo", "--devices", "500", "--image-size", "8MiB"}, // past the embedded limit
	} {
		_, err := runFirmcast(t, args...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 {
			t.Errorf("%v: error %v, want exit code 1", args, err)
		}
	}
}

// Past the measured limit of the embedded brokers the demo refuses, naming
// the limit and the external brokers to use, before it starts anything.
func TestDemoRefusesPastEmbeddedLimit(t *testing.T) {
	_, err := runFirmcast(t, "demo", "--devices", "500", "--image-size", "8MiB")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("error %v, want exit code 1", err)
	}
	for _, want := range []string{"1.00 GiB", "--broker", "--nats", "--beyond-limit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
