package bootctl

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The status area is a log of fixed-size records appended across its
// sectors. The valid record with the highest sequence number is the
// state; a torn record fails its CRC and the previous one stands. When a
// sector is full the next one is erased and the log continues there, so
// the newest record is never erased. Record format (little endian):
//
//	off len field
//	  0   4 magic "FCST"
//	  4   8 sequence number
//	 12   8 anti-rollback floor (never decreases)
//	 20   1 journalled operation (none, copy)
//	 21   1 action of the operation (install, revert, recover)
//	 22   1 source slot (int8; -1 none)
//	 23   1 reserved (int8; -1)
//	 24   1 slot keeping the previous image (int8; -1 none)
//	 25   1 trial flag
//	 26   1 trial boots so far
//	 27   1 reason of the last revert or recovery
//	 28  32 target: digest of the image the operation copies
//	 60  32 digest of the image in trial
//	 92  32 digest of the last confirmed image
//	124  32 digest of the last rejected (reverted-from) image
//	156   4 CRC-32 of bytes 0..155
const (
	statusMagic      = "FCST"
	statusRecordSize = 160
)

type journalOp uint8

const (
	opNone journalOp = iota
	opCopy           // copying slot Src into the active region
)

// Action is what a boot did.
type Action string

const (
	// ActionNone booted the active image unchanged.
	ActionNone Action = "none"
	// ActionInstalled copied a newer candidate into the active region; it
	// boots in trial state.
	ActionInstalled Action = "installed"
	// ActionReverted restored the previous image after a trial image was
	// not confirmed in time or was found damaged.
	ActionReverted Action = "reverted"
	// ActionRecovered replaced a damaged active image with the newest
	// valid stored image at or above the floor.
	ActionRecovered Action = "recovered"
	// ActionFailed means no image may boot: the recovery state.
	ActionFailed Action = "failed"
)

var actionCodes = []Action{ActionNone, ActionInstalled, ActionReverted, ActionRecovered, ActionFailed}

func actionCode(a Action) uint8 {
	for i, x := range actionCodes {
		if x == a {
			return uint8(i)
		}
	}
	return 0
}

func actionOf(c uint8) Action {
	if int(c) < len(actionCodes) {
		return actionCodes[c]
	}
	return ActionNone
}

// Reason says why a boot reverted, recovered or failed.
type Reason uint8

const (
	ReasonNone Reason = iota
	// ReasonTrialExpired: the trial image was not confirmed within K boots.
	ReasonTrialExpired
	// ReasonActiveDamaged: the active image failed its header, tag,
	// envelope or digest check.
	ReasonActiveDamaged
	// ReasonBelowFloor: the active image's security counter is below the floor.
	ReasonBelowFloor
	// ReasonSourceDamaged: the image being installed was damaged before the
	// copy finished.
	ReasonSourceDamaged
	// ReasonNoFallback: the trial expired but no previous image remains;
	// the trial image keeps running unconfirmed.
	ReasonNoFallback
	// ReasonNoValidImage: nothing at or above the floor verifies.
	ReasonNoValidImage
	// ReasonNoActiveImage: the active region holds no header (a new device).
	ReasonNoActiveImage
)

var reasonText = []string{"", "trial image not confirmed within the allowed boots",
	"active image damaged", "active image below the anti-rollback floor",
	"image being installed was damaged", "trial expired but no previous image to revert to",
	"no valid image at or above the anti-rollback floor", "no active image"}

func (r Reason) String() string {
	if int(r) < len(reasonText) {
		return reasonText[r]
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

// status is one record: the persisted state of the device.
type status struct {
	Seq        uint64
	Floor      uint64
	Op         journalOp
	Action     Action
	Src, Dst   int
	Prev       int
	Trial      bool
	TrialBoots int
	Reason     Reason
	Target     Digest
	TrialImage Digest
	Confirmed  Digest
	Rejected   Digest
}

func emptyStatus() status { return status{Src: -1, Dst: -1, Prev: -1, Action: ActionNone} }

func (s status) marshal(stride int) []byte {
	b := make([]byte, stride)
	copy(b, statusMagic)
	binary.LittleEndian.PutUint64(b[4:], s.Seq)
	binary.LittleEndian.PutUint64(b[12:], s.Floor)
	b[20] = byte(s.Op)
	b[21] = actionCode(s.Action)
	b[22], b[23], b[24] = byte(int8(s.Src)), byte(int8(s.Dst)), byte(int8(s.Prev))
	if s.Trial {
		b[25] = 1
	}
	b[26] = byte(min(s.TrialBoots, 255))
	b[27] = byte(s.Reason)
	copy(b[28:], s.Target[:])
	copy(b[60:], s.TrialImage[:])
	copy(b[92:], s.Confirmed[:])
	copy(b[124:], s.Rejected[:])
	binary.LittleEndian.PutUint32(b[156:], crc32.ChecksumIEEE(b[:156]))
	for i := statusRecordSize; i < stride; i++ {
		b[i] = Erased
	}
	return b
}

func parseStatus(b []byte) (status, bool) {
	if len(b) < statusRecordSize || string(b[:4]) != statusMagic ||
		crc32.ChecksumIEEE(b[:156]) != binary.LittleEndian.Uint32(b[156:]) ||
		b[20] > byte(opCopy) || int(b[21]) >= len(actionCodes) || b[25] > 1 {
		return status{}, false
	}
	s := status{
		Seq:        binary.LittleEndian.Uint64(b[4:]),
		Floor:      binary.LittleEndian.Uint64(b[12:]),
		Op:         journalOp(b[20]),
		Action:     actionOf(b[21]),
		Src:        int(int8(b[22])),
		Dst:        int(int8(b[23])),
		Prev:       int(int8(b[24])),
		Trial:      b[25] == 1,
		TrialBoots: int(b[26]),
		Reason:     Reason(b[27]),
	}
	copy(s.Target[:], b[28:])
	copy(s.TrialImage[:], b[60:])
	copy(s.Confirmed[:], b[92:])
	copy(s.Rejected[:], b[124:])
	return s, true
}

// statusLog reads and appends status records. Not safe for concurrent use.
type statusLog struct {
	f        *Flash
	region   Region
	stride   int
	perSect  int
	cur      status
	have     bool
	sector   int   // sector (index in region) of cur
	lastUsed []int // per sector: last non-erased record position, -1 if none
}

func newStatusLog(f *Flash, r Region) *statusLog {
	g := f.Geometry()
	stride := (statusRecordSize + g.WriteAlign - 1) / g.WriteAlign * g.WriteAlign
	return &statusLog{f: f, region: r, stride: stride, perSect: g.SectorSize / stride}
}

// load scans the area for the newest valid record.
func (l *statusLog) load() error {
	g := l.f.Geometry()
	buf := make([]byte, g.SectorSize)
	l.cur, l.have, l.sector = emptyStatus(), false, 0
	l.lastUsed = make([]int, l.region.Sectors)
	var floor uint64
	for i := range l.region.Sectors {
		l.lastUsed[i] = -1
		if _, err := l.f.ReadAt(buf, int64(l.region.Start+i)*int64(g.SectorSize)); err != nil {
			return fmt.Errorf("bootctl: read status: %w", err)
		}
		for p := range l.perSect {
			rec := buf[p*l.stride : (p+1)*l.stride]
			if isErased(rec) {
				continue
			}
			l.lastUsed[i] = p
			s, ok := parseStatus(rec)
			if !ok {
				continue
			}
			floor = max(floor, s.Floor)
			if !l.have || s.Seq > l.cur.Seq {
				l.cur, l.have, l.sector = s, true, i
			}
		}
	}
	l.cur.Floor = max(l.cur.Floor, floor)
	return nil
}

// append persists s as the new state. The floor never decreases.
func (l *statusLog) append(s status) error {
	s.Seq = l.cur.Seq + 1
	s.Floor = max(s.Floor, l.cur.Floor)
	sec, pos := l.sector, l.lastUsed[l.sector]+1
	if pos >= l.perSect {
		sec, pos = (l.sector+1)%l.region.Sectors, 0
		if err := l.f.Erase(l.region.Start + sec); err != nil {
			return fmt.Errorf("bootctl: erase status sector: %w", err)
		}
		l.lastUsed[sec] = -1
	}
	off := int64(l.region.Start+sec)*int64(l.f.Geometry().SectorSize) + int64(pos*l.stride)
	if err := l.f.Program(s.marshal(l.stride), off); err != nil {
		return fmt.Errorf("bootctl: write status: %w", err)
	}
	l.cur, l.have, l.sector, l.lastUsed[sec] = s, true, sec, pos
	return nil
}
