package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/firmcast/firmcast/delta"
	"github.com/firmcast/firmcast/internal/atomicfile"
	"github.com/firmcast/firmcast/schemas"
	"github.com/firmcast/firmcast/schemas/suit"
)

// manifestDeltas makes the delta from each --delta-from source image to
// --image (package delta, on this machine), writes it beside --out and
// returns the offers to sign. The delta's chunk table uses --chunk-size,
// which must be the server's chunk size (as for the image).
func manifestDeltas(cmd *cobra.Command, f *createFlags) ([]suit.DeltaInfo, error) {
	if len(f.deltaFrom) == 0 {
		return nil, nil
	}
	target, err := os.ReadFile(f.image)
	if err != nil {
		return nil, fmt.Errorf("--image: %w", err)
	}
	var out []suit.DeltaInfo
	for _, src := range f.deltaFrom {
		source, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("--delta-from: %w", err)
		}
		var b bytes.Buffer
		if _, err := delta.Make(cmd.Context(), &b, source, target); err != nil {
			return nil, fmt.Errorf("--delta-from %s: %w", src, err)
		}
		d := b.Bytes()
		table, err := schemas.BuildChunkTable(bytes.NewReader(d), f.chunkSize)
		if err != nil {
			return nil, fmt.Errorf("--delta-from %s: chunk table: %w", src, err)
		}
		td, err := table.Digest()
		if err != nil {
			return nil, err
		}
		ss, ds := sha256.Sum256(source), sha256.Sum256(d)
		path := fmt.Sprintf("%s.delta-%s.bin", f.out, hex.EncodeToString(ss[:6]))
		if err := atomicfile.WriteFile(path, d, 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: delta of %d bytes from %s (%.1f%% of the %d-byte image); upload it with firmcast image upload\n",
			path, len(d), src, 100*float64(len(d))/float64(max(len(target), 1)), len(target))
		out = append(out, suit.DeltaInfo{SourceDigest: ss[:], SourceSize: uint64(len(source)), Digest: ds[:], Size: uint64(len(d)),
			ChunkSize: f.chunkSize, ChunkTableDigest: td[:]})
	}
	return out, nil
}
