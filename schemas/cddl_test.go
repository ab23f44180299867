package schemas

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// cddlRules maps each map rule of firmcast.cddl to its Go type.
var cddlRules = map[string]reflect.Type{
	"update-notice":    reflect.TypeFor[UpdateNotice](),
	"source-hint":      reflect.TypeFor[SourceHint](),
	"chunk-request":    reflect.TypeFor[ChunkRequest](),
	"chunk":            reflect.TypeFor[Chunk](),
	"chunk-table":      reflect.TypeFor[ChunkTable](),
	"wave-end":         reflect.TypeFor[WaveEnd](),
	"repair-announce":  reflect.TypeFor[RepairAnnounce](),
	"parity-chunk":     reflect.TypeFor[ParityChunk](),
	"device-report":    reflect.TypeFor[DeviceReport](),
	"campaign-command": reflect.TypeFor[CampaignCommand](),
	"campaign-spec":    reflect.TypeFor[CampaignSpec](),
	"campaign-status":  reflect.TypeFor[CampaignStatus](),
	"campaign-reply":   reflect.TypeFor[CampaignReply](),
}

// TestCDDLMatchesGo checks that every map rule of firmcast.cddl lists the
// same integer keys as its Go type, optional ("?") exactly where the Go
// field is omitempty.
func TestCDDLMatchesGo(t *testing.T) {
	f, err := os.Open("firmcast.cddl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ruleStart := regexp.MustCompile(`^([a-z0-9-]+) = \{\s*$`)
	keyLine := regexp.MustCompile(`^\s+(\? )?(\d+):`)
	got := map[string]map[int]bool{} // rule -> key -> optional
	var rule string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := ruleStart.FindStringSubmatch(line); m != nil {
			rule = m[1]
			got[rule] = map[int]bool{}
			continue
		}
		if rule == "" {
			continue
		}
		if strings.HasPrefix(line, "}") {
			rule = ""
			continue
		}
		if m := keyLine.FindStringSubmatch(line); m != nil {
			k, _ := strconv.Atoi(m[2])
			if _, dup := got[rule][k]; dup {
				t.Errorf("%s: key %d twice", rule, k)
			}
			got[rule][k] = m[1] != ""
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for name, typ := range cddlRules {
		keys, ok := got[name]
		if !ok {
			t.Errorf("rule %s missing from firmcast.cddl", name)
			continue
		}
		want := map[int]bool{}
		for i := range typ.NumField() {
			tag := typ.Field(i).Tag.Get("cbor")
			parts := strings.Split(tag, ",")
			k, err := strconv.Atoi(parts[0])
			if err != nil || !strings.Contains(tag, "keyasint") {
				t.Fatalf("%s.%s: tag %q has no integer key", typ.Name(), typ.Field(i).Name, tag)
			}
			want[k] = strings.Contains(tag, "omitempty")
		}
		if !reflect.DeepEqual(keys, want) {
			t.Errorf("rule %s: keys (key: optional) %v, Go type %s has %v", name, keys, typ.Name(), want)
		}
	}
	for name := range got {
		if _, ok := cddlRules[name]; !ok {
			t.Errorf("map rule %s has no Go type in cddlRules", name)
		}
	}
}

// TestCDDLSizeCaps checks the size caps quoted in firmcast.cddl's header.
func TestCDDLSizeCaps(t *testing.T) {
	b, err := os.ReadFile("firmcast.cddl")
	if err != nil {
		t.Fatal(err)
	}
	for rule, m := range map[string]Message{
		"update-notice": &UpdateNotice{}, "chunk-request": &ChunkRequest{}, "chunk": &Chunk{},
		"chunk-table": &ChunkTable{}, "device-report": &DeviceReport{},
		"campaign-command": &CampaignCommand{}, "campaign-reply": &CampaignReply{},
	} {
		want := regexp.MustCompile(`[ ;]` + rule + ` ` + strconv.Itoa(m.MaxSize()) + `[,.]`)
		if !want.Match(b) {
			t.Errorf("firmcast.cddl does not quote the %s cap as %d", rule, m.MaxSize())
		}
	}
}
