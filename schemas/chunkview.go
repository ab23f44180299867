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

// DecodeParityChunkView is DecodeChunkView for a ParityChunk: the same
// result and errors as Decode, without copying (c.Image and c.Data alias
// data). A device's receive path checks each parity chunk against the
// signed table as it arrives, before queuing it.
func DecodeParityChunkView(data []byte, c *ParityChunk) error {
	var vals [5]uint64
	var strs [5][]byte
	if viewFields(data, parityShape, vals[:], strs[:]) && vals[0] == Version && vals[2] <= math.MaxUint32 && vals[3] <= math.MaxUint32 {
		v := ParityChunk{V: uint(vals[0]), Image: strs[1], Block: uint32(vals[2]), Index: uint32(vals[3]), Data: strs[4]}
		if len(data) <= v.MaxSize() && v.Validate() == nil {
			*c = v
			return nil
		}
	}
	return Decode(data, c)
}

// chunkView parses the deterministic encoding of a chunk, aliasing data.
func chunkView(data []byte) (c Chunk, ok bool) {
	var vals [4]uint64
	var strs [4][]byte
	if !viewFields(data, chunkShape, vals[:], strs[:]) || vals[0] != Version || vals[2] > math.MaxUint32 {
		return Chunk{}, false
	}
	return Chunk{V: uint(vals[0]), Image: strs[1], Index: uint32(vals[2]), Data: strs[3]}, true
}

// viewFields parses the deterministic encoding of a map of exactly
// len(shape) entries, keys 0 to len(shape)-1 in order, each value of
// the major type shape[key] (0 unsigned integer, 2 byte string) with
// every head in its shortest form and nothing after the map: the
// integers go to vals, the byte strings to strs (aliasing data).
func viewFields(data []byte, shape []byte, vals []uint64, strs [][]byte) bool {
	major, n, used, ok := readShortestHead(data)
	if !ok || major != 5 || n != uint64(len(shape)) {
		return false
	}
	data = data[used:]
	for key, want := range shape {
		major, k, used, ok := readShortestHead(data)
		if !ok || major != 0 || k != uint64(key) {
			return false
		}
		data = data[used:]
		major, arg, used, ok := readShortestHead(data)
		if !ok || major != want {
			return false
		}
		data = data[used:]
		if major == 2 {
			if arg > uint64(len(data)) {
				return false
			}
			strs[key], data = data[:arg:arg], data[arg:]
		} else {
			vals[key] = arg
		}
	}
	return len(data) == 0
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
