package schemas

import (
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// Benchmarks of the wire codec on the two hottest messages: a 16 KiB chunk
// (per chunk on every device) and a device report (per device every few
// percent). Peers in the same run: a plain 16 KiB copy (the floor for
// moving the data once) and fxamacker's default-mode Marshal/Unmarshal
// (no validation, no deterministic check). Results: docs/BENCHMARKS.md.

func benchChunk() *Chunk {
	data := make([]byte, 16<<10)
	for i := range data {
		data[i] = byte(i)
	}
	return &Chunk{V: Version, Image: rep(0xaa, 32), Index: 1234, Data: data}
}

func benchReport() *DeviceReport {
	return &DeviceReport{
		V: Version, Device: "dev-000042", Campaign: "camp-2026-11", State: StateDownloading,
		BytesDone: 1 << 20, BytesTotal: 4 << 20, ActiveVersion: 7, Counter: 1234,
		Time: 1764072000123, Source: SourceBroker, Class: "sensor-v2",
	}
}

func BenchmarkChunk16KEncode(b *testing.B) {
	c := benchChunk()
	b.SetBytes(int64(len(c.Data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChunk16KDecode(b *testing.B) {
	benchChunkDecode(b, func(m []byte, c *Chunk) error { return Decode(m, c) })
}

// The receive path's decoder: no copy, no allocation.
func BenchmarkChunk16KDecodeView(b *testing.B) { benchChunkDecode(b, DecodeChunkView) }

// benchChunkDecode decodes one encoded 16 KiB chunk with decode.
func benchChunkDecode(b *testing.B, decode func([]byte, *Chunk) error) {
	c := benchChunk()
	enc, err := Encode(c)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(c.Data)))
	b.ReportAllocs()
	var out Chunk
	for b.Loop() {
		if err := decode(enc, &out); err != nil {
			b.Fatal(err)
		}
	}
}

// Peer: copying the 16 KiB payload into a fresh buffer once.
func BenchmarkChunk16KPeerCopy(b *testing.B) {
	c := benchChunk()
	b.SetBytes(int64(len(c.Data)))
	b.ReportAllocs()
	var sink []byte
	for b.Loop() {
		sink = append([]byte(nil), c.Data...)
	}
	_ = sink
}

// Peer: fxamacker's default mode, no validation.
func BenchmarkChunk16KPeerDefaultMarshal(b *testing.B) {
	c := benchChunk()
	b.SetBytes(int64(len(c.Data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cbor.Marshal(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChunk16KPeerDefaultUnmarshal(b *testing.B) {
	c := benchChunk()
	enc, _ := cbor.Marshal(c)
	b.SetBytes(int64(len(c.Data)))
	b.ReportAllocs()
	var out Chunk
	for b.Loop() {
		if err := cbor.Unmarshal(enc, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReportEncode(b *testing.B) {
	r := benchReport()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReportDecode(b *testing.B) {
	enc, err := Encode(benchReport())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var out DeviceReport
	for b.Loop() {
		if err := Decode(enc, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReportPeerDefaultMarshal(b *testing.B) {
	r := benchReport()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cbor.Marshal(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReportPeerDefaultUnmarshal(b *testing.B) {
	enc, _ := cbor.Marshal(benchReport())
	b.ReportAllocs()
	var out DeviceReport
	for b.Loop() {
		if err := cbor.Unmarshal(enc, &out); err != nil {
			b.Fatal(err)
		}
	}
}
