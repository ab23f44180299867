package publisher

import (
	"container/list"
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/firmcast/firmcast/internal/blockcode"
	"github.com/firmcast/firmcast/schemas"
)

// parityCache keeps the encoded parity chunk messages
// (schemas.ParityChunk) of recently repaired blocks, so that a repair
// round only publishes: without it every round read each block it
// repairs back from the image store (K direct gets, each hashed) and
// coded it again, and at N = 500 rounds took 4 to 19 s to go out,
// overlapping one another, while devices waited for them. Bounded in
// bytes (least recently used blocks go first); concurrent fills of one
// block are merged into one.
type parityCache struct {
	max   int64
	fills singleflight.Group

	mu    sync.Mutex
	used  int64
	lru   *list.List // of *parityEntry, most recently used first
	byKey map[parityKey]*list.Element
	// streaming holds, per image a wave is sending, a channel closed
	// when the wave ends and the parity it made is cached (parityAcc).
	streaming map[string]chan struct{}
}

type parityKey struct {
	image string
	block uint32
}

type parityEntry struct {
	key  parityKey
	msgs [][]byte // by parity index
	size int64
}

func newParityCache(max int64) *parityCache {
	return &parityCache{max: max, lru: list.New(), byKey: map[parityKey]*list.Element{}, streaming: map[string]chan struct{}{}}
}

// block returns the encoded parity chunk messages of block b of the coded
// image d, by parity index, from the cache or computed from the image's
// chunks (read), then kept while the cache has room.
func (c *parityCache) block(ctx context.Context, d *imageData, b uint32, read blockcode.ChunkReader) ([][]byte, error) {
	k := parityKey{d.info.Digest, b}
	c.mu.Lock()
	if e, ok := c.byKey[k]; ok {
		c.lru.MoveToFront(e)
		msgs := e.Value.(*parityEntry).msgs
		c.mu.Unlock()
		return msgs, nil
	}
	wave := c.streaming[k.image]
	c.mu.Unlock()
	if wave != nil {
		// A wave is making this image's parity as it goes: wait for it
		// rather than read the block again.
		select {
		case <-wave:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c.mu.Lock()
		e, ok := c.byKey[k]
		if ok {
			c.lru.MoveToFront(e)
		}
		c.mu.Unlock()
		if ok {
			return e.Value.(*parityEntry).msgs, nil
		}
	}
	ch := c.fills.DoChan(fmt.Sprintf("%s/%d", k.image, b), func() (any, error) {
		return c.fill(context.WithoutCancel(ctx), d, b, read)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([][]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *parityCache) fill(ctx context.Context, d *imageData, b uint32, read blockcode.ChunkReader) ([][]byte, error) {
	enc, err := blockcode.NewEncoder(d.table)
	if err != nil {
		return nil, err
	}
	pc, err := enc.Parity(ctx, b, read)
	if err != nil {
		return nil, err
	}
	msgs, err := encodeParity(d, b, pc)
	if err != nil {
		return nil, err
	}
	return c.put(d, b, msgs), nil
}

// encodeParity encodes the parity chunks pc of block b of d as messages.
func encodeParity(d *imageData, b uint32, pc [][]byte) ([][]byte, error) {
	msgs := make([][]byte, len(pc))
	for i, data := range pc {
		m, err := schemas.Encode(&schemas.ParityChunk{V: schemas.Version, Image: d.digest, Block: b, Index: uint32(i), Data: data})
		if err != nil {
			return nil, err
		}
		msgs[i] = m
	}
	return msgs, nil
}

// put keeps msgs, the parity messages of block b of d, evicting the
// least recently used blocks beyond the bound, and returns the messages
// cached for the block (msgs, or those another fill put first).
func (c *parityCache) put(d *imageData, b uint32, msgs [][]byte) [][]byte {
	var size int64
	for _, m := range msgs {
		size += int64(len(m))
	}
	if size > c.max {
		return msgs // larger than the cache: used once, not kept
	}
	k := parityKey{d.info.Digest, b}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[k]; ok {
		return e.Value.(*parityEntry).msgs
	}
	for c.used+size > c.max {
		old := c.lru.Back()
		oe := old.Value.(*parityEntry)
		c.lru.Remove(old)
		delete(c.byKey, oe.key)
		c.used -= oe.size
	}
	c.byKey[k] = c.lru.PushFront(&parityEntry{key: k, msgs: msgs, size: size})
	c.used += size
	return msgs
}

// parityAcc makes a coded image's parity from the chunks a wave sends
// (blockcode.Accumulator) and caches it when the wave ends.
type parityAcc struct {
	c    *parityCache
	d    *imageData
	acc  *blockcode.Accumulator
	done chan struct{}
}

// stream returns a parityAcc for a wave of d, or nil when d is not
// coded, its parity is cached already, another wave of it is making it,
// or it would not fit in the cache. Rounds that need d's parity while
// the wave flows wait for it (block).
func (c *parityCache) stream(d *imageData) *parityAcc {
	t := d.table
	if !t.Coded() {
		return nil
	}
	nb := t.NumBlocks()
	if int64(nb)*int64(t.ParityPerBlock)*int64(t.ChunkSize+chunkOverhead) > c.max {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.streaming[d.info.Digest]; ok {
		return nil
	}
	all := true
	for b := range nb {
		if _, ok := c.byKey[parityKey{d.info.Digest, b}]; !ok {
			all = false
			break
		}
	}
	if all {
		return nil
	}
	acc, err := blockcode.NewAccumulator(t)
	if err != nil {
		return nil
	}
	a := &parityAcc{c: c, d: d, acc: acc, done: make(chan struct{})}
	c.streaming[d.info.Digest] = a.done
	return a
}

// add adds chunk i, as the wave read it from the store (and checked).
func (a *parityAcc) add(i int, data []byte) {
	if a != nil {
		_ = a.acc.Add(uint32(i), data) // a chunk the table refuses: the block is read again when needed
	}
}

// finish caches the parity of every block the wave sent whole and lets
// the rounds waiting for it go on.
func (a *parityAcc) finish() {
	if a == nil {
		return
	}
	defer func() {
		a.c.mu.Lock()
		delete(a.c.streaming, a.d.info.Digest)
		a.c.mu.Unlock()
		close(a.done)
	}()
	for b := range a.d.table.NumBlocks() {
		pc := a.acc.Parity(b)
		if pc == nil {
			continue
		}
		msgs, err := encodeParity(a.d, b, pc)
		if err != nil {
			return
		}
		a.c.put(a.d, b, msgs)
	}
}

// forget drops the cached blocks of image (deleted).
func (c *parityCache) forget(image string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.byKey {
		if k.image == image {
			c.used -= e.Value.(*parityEntry).size
			c.lru.Remove(e)
			delete(c.byKey, k)
		}
	}
}
