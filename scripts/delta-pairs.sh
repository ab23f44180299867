#!/usr/bin/env bash
# delta-pairs.sh: build the two real binary pairs of the "Delta updates"
# benchmark (docs/BENCHMARKS.md) into OUT (default /tmp/fcdelta), from
# `git archive` exports (no worktree, no stash, nothing in this checkout
# is touched):
#
#   OUT/commit-old, OUT/commit-new   firmcast-agent at FROM and at TO, two
#                                    consecutive commits (default 6a47481
#                                    and 184a727: deviceagent and fetcher
#                                    report download progress on a timer)
#   OUT/edit-old, OUT/edit-new       firmcast-agent at TO, and the same
#                                    with one small source change: the
#                                    default ProgressInterval, time.Minute
#                                    -> 2 * time.Minute (deviceagent/agent.go)
#
# Builds use -trimpath, as a release build would, so the export directory
# does not leak into the binaries. LDFLAGS (default empty: a plain
# `go build`) is passed to -ldflags: LDFLAGS="-s -w" builds stripped
# binaries (no symbol table, no DWARF), as firmware is shipped; OUT then
# names another directory, e.g. OUT=/tmp/fcdelta-stripped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fcdelta}
FROM=${FROM:-6a47481}
TO=${TO:-184a727}
LDFLAGS=${LDFLAGS:-}
mkdir -p "$OUT"

build() { # build <commit> <dest binary> [sed expression for deviceagent/agent.go]
  local src="$OUT/src"
  rm -rf "$src" && mkdir -p "$src"
  git archive "$1" | tar -x -C "$src"
  if [ -n "${3:-}" ]; then
    sed -i "$3" "$src/deviceagent/agent.go"
    grep -q '2 \* time.Minute$' "$src/deviceagent/agent.go" || { echo "delta-pairs.sh: the source change did not apply" >&2; exit 1; }
  fi
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags="$LDFLAGS" -o "$2" ./cmd/firmcast-agent)
  rm -rf "$src"
}

build "$FROM" "$OUT/commit-old"
build "$TO" "$OUT/commit-new"
cp "$OUT/commit-new" "$OUT/edit-old"
build "$TO" "$OUT/edit-new" 's/cfg.ProgressInterval = time.Minute$/cfg.ProgressInterval = 2 * time.Minute/'
ls -l "$OUT"/commit-old "$OUT"/commit-new "$OUT"/edit-old "$OUT"/edit-new
