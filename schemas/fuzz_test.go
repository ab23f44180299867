package schemas

import (
	"bytes"
	"reflect"
	"testing"
)

// fuzzDecode fuzzes Decode for one message type, seeded from its vectors
// and the small rows of the rejection table. Properties: Decode never
// panics; whatever it accepts is valid, re-encodes to exactly the input
// (the decoder accepts only the deterministic encoding) and decodes again
// to an equal value.
func fuzzDecode[T any, PT interface {
	*T
	Message
}](f *testing.F, extra func(PT)) {
	var zero PT = new(T)
	for _, v := range vectors(f) {
		if reflect.TypeOf(v.msg) != reflect.TypeOf(zero) {
			continue
		}
		b, err := Encode(v.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		for _, r := range genericRejections(f, v.msg, b) {
			if len(r.data) <= 4<<10 {
				f.Add(r.data)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := PT(new(T))
		if err := Decode(data, m); err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid message: %v", err)
		}
		b, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode of a decoded message: %v", err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", data, b)
		}
		m2 := PT(new(T))
		if err := Decode(b, m2); err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("second decode: %v", err)
		}
		if extra != nil {
			extra(m)
		}
	})
}

func FuzzDecodeNotice(f *testing.F) { fuzzDecode[UpdateNotice](f, nil) }

func FuzzDecodeChunkRequest(f *testing.F) {
	fuzzDecode[ChunkRequest](f, func(r *ChunkRequest) {
		w := r.Wanted(4096)
		if len(r.Ranges) > 0 && r.Ranges[0].First < 4096 && !w.Has(r.Ranges[0].First) {
			panic("Wanted misses the first range")
		}
	})
}

func FuzzDecodeChunk(f *testing.F) { fuzzDecode[Chunk](f, nil) }

func FuzzDecodeWaveEnd(f *testing.F) { fuzzDecode[WaveEnd](f, nil) }

func FuzzDecodeRepairAnnounce(f *testing.F) { fuzzDecode[RepairAnnounce](f, nil) }

func FuzzDecodeParityChunk(f *testing.F) {
	fuzzDecode[ParityChunk](f, func(c *ParityChunk) {
		b, _ := Encode(c)
		if !IsParityChunk(b) || IsChunk(b) {
			panic("a parity chunk's shape is not recognised")
		}
		_ = testCodedTable(f).VerifyParity(c.Block, c.Index, c.Data)
	})
}

func FuzzDecodeChunkTable(f *testing.F) {
	fuzzDecode[ChunkTable](f, func(ct *ChunkTable) {
		last := ct.NumChunks() - 1
		_ = ct.VerifyChunk(last, make([]byte, ct.ChunkLen(last)))
		if nb := ct.NumBlocks(); nb > 0 {
			first, count := ct.BlockChunks(nb - 1)
			if count == 0 || first+count != ct.NumChunks() {
				panic("the last block does not end the image")
			}
			_ = ct.VerifyParity(nb-1, ct.ParityPerBlock-1, make([]byte, ct.ChunkSize))
		}
		if _, err := ct.Digest(); err != nil {
			panic(err)
		}
	})
}

func FuzzDecodeReport(f *testing.F) { fuzzDecode[DeviceReport](f, nil) }

func FuzzDecodeCampaignCommand(f *testing.F) { fuzzDecode[CampaignCommand](f, nil) }

func FuzzDecodeCampaignReply(f *testing.F) { fuzzDecode[CampaignReply](f, nil) }
