package schemas_test

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/firmcast/firmcast/schemas"
)

func Example() {
	image := bytes.Repeat([]byte("firmware"), 100) // 800 bytes
	table, err := schemas.BuildChunkTable(bytes.NewReader(image), 256)
	if err != nil {
		panic(err)
	}
	topics := schemas.MustTopics("tenant-a/firmcast")
	t, _ := topics.Chunks(schemas.DigestHex(table.Image))
	fmt.Println(t.MQTT, table.NumChunks(), "chunks")

	// Publisher side: encode chunk 3 (the short last one).
	b, err := schemas.Encode(&schemas.Chunk{V: schemas.Version, Image: table.Image, Index: 3, Data: image[768:]})
	if err != nil {
		panic(err)
	}

	// Device side: decode, then check against the (signed) table.
	var c schemas.Chunk
	if err := schemas.Decode(b, &c); err != nil {
		panic(err)
	}
	fmt.Println(table.VerifyChunk(c.Index, c.Data))
	c.Data[0] ^= 1
	fmt.Println(errors.Is(table.VerifyChunk(c.Index, c.Data), schemas.ErrDigestMismatch))

	// Output:
	// tenant-a/firmcast/v1/img/563839e4ec15a564d41d4299e4c5eed99cbb5754a36376adc911f44d2fe6cc40/chunks 4 chunks
	// <nil>
	// true
}

func ExampleBitmap() {
	have := schemas.NewBitmap(20)
	for _, i := range []uint32{0, 1, 2, 7, 8} {
		have.Set(i)
	}
	fmt.Println(have.Count(), have.Missing(20))
	// Output: 5 [[3,7) [9,20)]
}

func ExampleDecode() {
	var r schemas.DeviceReport
	err := schemas.Decode([]byte{0xa1, 0x00, 0x02}, &r) // {0: 2}
	fmt.Println(errors.Is(err, schemas.ErrVersion), err)
	// Output: true schemas: unsupported message version: device report: version 2, want 1
}
