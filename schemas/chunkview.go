package schemas

import "math"

// DecodeChunkView decodes a Chunk message as Decode does, with the same
// result and the same errors, but without copying: c.Image and c.Data
// alias data, which the caller must then leave unmodified for as long as
// it uses them. It is the receive path's decoder: a device decodes every
// chunk of every image it downloads, and Decode's copy of each chunk's
// bytes (plus the re-encoding that checks determinism) was a tenth of a
// simulated fleet's CPU.
//
// It reads the one deterministic encoding of a chunk (a map of four
// entries, keys 0 to 3 in order, every head in its shortest form) with no
// allocation; anything else, and anything Validate refuses, goes to
// Decode, which says what is wrong.
func DecodeChunkView(data []byte, c *Chunk) error {
	if v, ok := chunkView(data); ok && len(data) <= v.MaxSize() && v.Validate() == nil {
		*c = v
		return nil
	}
	return Decode(data, c)
}

// chunkView parses the deterministic encoding of a chunk, aliasing data.
func chunkView(data []byte) (c Chunk, ok bool) {
	major, n, used, ok := readShortestHead(data)
	if !ok || major != 5 || n != 4 {
		return Chunk{}, false
	}
	data = data[used:]
	var vals [4]uint64
	var strs [4][]byte
	for key, want := range chunkShape {
		major, k, used, ok := readShortestHead(data)
		if !ok || major != 0 || k != uint64(key) {
			return Chunk{}, false
		}
		data = data[used:]
		major, arg, used, ok := readShortestHead(data)
		if !ok || major != want {
			return Chunk{}, false
		}
		data = data[used:]
		if major == 2 {
			if arg > uint64(len(data)) {
				return Chunk{}, false
			}
			strs[key], data = data[:arg:arg], data[arg:]
		} else {
			vals[key] = arg
		}
	}
	if len(data) != 0 || vals[0] != Version || vals[2] > math.MaxUint32 {
		return Chunk{}, false
	}
	return Chunk{V: uint(vals[0]), Image: strs[1], Index: uint32(vals[2]), Data: strs[3]}, true
}

// readShortestHead is readHead for deterministic CBOR: it refuses a head
// whose argument has a shorter encoding (RFC 8949, section 4.2.1).
func readShortestHead(b []byte) (major byte, arg uint64, n int, ok bool) {
	major, arg, n, ok = readHead(b)
	if !ok {
		return 0, 0, 0, false
	}
	var shortest int
	switch {
	case arg < 24:
		shortest = 1
	case arg <= math.MaxUint8:
		shortest = 2
	case arg <= math.MaxUint16:
		shortest = 3
	case arg <= math.MaxUint32:
		shortest = 5
	default:
		shortest = 9
	}
	return major, arg, n, n == shortest
}
