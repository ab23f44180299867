package blockcode

import "errors"

// ErrNotCoded: the chunk table commits no parity (ChunkTable.Block == 0).
var ErrNotCoded = errors.New("blockcode: chunk table is not coded")

// ErrShort: a block does not hold enough verified symbols to be rebuilt.
var ErrShort = errors.New("blockcode: not enough symbols to rebuild the block")

// ErrBadParams: a block size or parity count the code cannot make.
var ErrBadParams = errors.New("blockcode: bad code parameters")
