package bootctl

import (
	"bytes"
	"testing"
)

func sampleStatus() status {
	s := emptyStatus()
	s.Seq, s.Floor, s.Op, s.Action, s.Src, s.Prev = 9, 3, opCopy, ActionReverted, 1, 0
	s.Trial, s.TrialBoots, s.Reason = true, 2, ReasonTrialExpired
	s.Target[0], s.TrialImage[1], s.Confirmed[2], s.Rejected[3] = 1, 2, 3, 4
	return s
}

func TestStatusRecordRoundTrip(t *testing.T) {
	for _, stride := range []int{statusRecordSize, 176} {
		s := sampleStatus()
		b := s.marshal(stride)
		got, ok := parseStatus(b)
		if !ok || got != s {
			t.Fatalf("stride %d: %+v %v, want %+v", stride, got, ok, s)
		}
		b[30] ^= 1
		if _, ok := parseStatus(b); ok {
			t.Fatalf("stride %d: damaged record accepted", stride)
		}
	}
}

// FuzzParseStatus feeds arbitrary bytes to the status record parser: no
// panic, and an accepted record re-encodes to the same bytes.
func FuzzParseStatus(f *testing.F) {
	f.Add(sampleStatus().marshal(statusRecordSize))
	f.Add(emptyStatus().marshal(statusRecordSize))
	f.Add(bytes.Repeat([]byte{0xFF}, statusRecordSize))
	f.Add([]byte(statusMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, ok := parseStatus(b)
		if !ok {
			return
		}
		if again := s.marshal(statusRecordSize); !bytes.Equal(again[:156], b[:156]) {
			t.Fatalf("accepted record is not canonical:\n%x\n%x", b[:statusRecordSize], again)
		}
	})
}
