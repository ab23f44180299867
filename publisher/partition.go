package publisher

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// The per-device campaign state is partitioned by device: Config.Partitions
// buckets, a device's records always in the same one (FNV-1a of its id,
// modulo the count), so that report writes spread over as many stream
// leaders while one device's writes stay in one stream, in order, each a
// compare-and-set on that stream's revision. Partition 0 is the bucket of
// an unpartitioned installation (<ns>_campdev); partition i > 0 is
// <ns>_campdev_p<i>. With one partition (the default) the layout is
// exactly the one before partitioning.
//
// The count is part of the stored layout: a device's partition depends on
// it, so it is recorded in the namespace (the lease bucket, key "layout")
// by the first publisher that starts, and a publisher configured with
// another count refuses to start (ErrInvalid). An installation from before
// partitioning has no record; it is taken as one partition when its state
// bucket holds anything, so it keeps working unchanged (and a count other
// than 1 there is refused rather than losing sight of its records).

// MaxPartitions bounds Config.Partitions.
const MaxPartitions = 64

// partitions are the per-device campaign state buckets.
type partitions struct {
	kvs []jetstream.KeyValue
}

// devicePartition returns device's partition among n.
func devicePartition(device string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(device))
	return int(h.Sum32() % uint32(n))
}

// partitionName is partition i's bucket name after the namespace's
// prefix; partitionBucket is the whole name in namespace ns.
func partitionName(i int) string {
	if i == 0 {
		return "campdev"
	}
	return "campdev_p" + strconv.Itoa(i)
}

func partitionBucket(ns string, i int) string { return ns + "_" + partitionName(i) }

// of returns the bucket holding device's records.
func (ps *partitions) of(device string) jetstream.KeyValue {
	return ps.kvs[devicePartition(device, len(ps.kvs))]
}

// ofKey returns the bucket holding key ("<campaign>.<device>").
func (ps *partitions) ofKey(key string) jetstream.KeyValue {
	_, dev, _ := strings.Cut(key, ".")
	return ps.of(dev)
}

// layout is the stored layout of a namespace.
type layout struct {
	Partitions int `json:"partitions"`
}

const layoutKey = "layout"

// checkLayout records the partition count n in the namespace, or checks
// it against the one recorded (see above).
func checkLayout(ctx context.Context, lease, part0 jetstream.KeyValue, n int) error {
	var cur layout
	_, err := getJSON(ctx, lease, "layout", layoutKey, &cur)
	if errors.Is(err, ErrNotFound) {
		if n > 1 {
			st, err := part0.Status(ctx)
			if err != nil {
				return fmt.Errorf("publisher: layout: %w", err)
			}
			if st.Values() > 0 {
				return fmt.Errorf("%w: config: partitions %d, but the namespace holds per-device state from before partitioning (one partition)", ErrInvalid, n)
			}
		}
		_, err = createJSON(ctx, lease, "layout", layoutKey, layout{Partitions: n})
		if errors.Is(err, ErrExists) { // another instance recorded it first
			return checkLayout(ctx, lease, part0, n)
		}
		return err
	}
	if err != nil {
		return err
	}
	if cur.Partitions != n {
		return fmt.Errorf("%w: config: partitions %d, but the namespace was set up with %d", ErrInvalid, n, cur.Partitions)
	}
	return nil
}
