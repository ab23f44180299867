#!/usr/bin/env bash
# cpu-sample.sh: the CPU the brokers and the bench use, second by second,
# beside a `firmcast bench` run (docs/BENCHMARKS.md, "Echo bursts"). The
# bench measures its own process's CPU; a broker running as its own
# process (the machine's nats-server and mosquitto) is measured here, from
# /proc/PID/stat (user + system time).
#
#   scripts/cpu-sample.sh sample NAME=PID... > FILE
#       every 0.5 s, one line: the time in ms, then NAME=ticks for each
#       PID, and bench=ticks for the running `firmcast bench` process (0
#       while there is none). Stop it with Ctrl-C or kill.
#   scripts/cpu-sample.sh segments FILE
#       the busy stretches of FILE (any broker above 0.15 of a core): when
#       each began, how long it lasted, and the core-seconds each process
#       used in it. A bench run shows two stretches per (case, run): the
#       raw fan-out, then the firmcast campaign (its wave and repair, then
#       the devices' installs).
#
# Example, the machine's brokers:
#   scripts/cpu-sample.sh sample nats=$(pgrep -x nats-server) mosquitto=$(pgrep -x mosquitto) > /tmp/cpu.txt &
#   firmcast bench --devices 500 --image-size 8MiB --cases mosquitto,nats --runs 3 --json > /tmp/b.json
#   kill %1; scripts/cpu-sample.sh segments /tmp/cpu.txt
set -euo pipefail

ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

case "${1:-}" in
sample)
	shift
	[ $# -gt 0 ] || { echo "usage: $0 sample NAME=PID..." >&2; exit 2; }
	hz=$(getconf CLK_TCK)
	echo "# clk_tck=$hz"
	while true; do
		line="$(date +%s%3N)"
		for np in "$@"; do
			line="$line ${np%%=*}=$(ticks "${np#*=}")"
		done
		b=$(pgrep -f '^[^ ]*firmcast bench|^[^ ]*/fc bench' | head -1 || true)
		line="$line bench=$([ -n "$b" ] && ticks "$b" || echo 0)"
		echo "$line"
		sleep 0.5
	done
	;;
segments)
	[ $# -eq 2 ] || { echo "usage: $0 segments FILE" >&2; exit 2; }
	awk '
	/^# clk_tck=/ { split($0, a, "="); hz = a[2]; next }
	{
		t = $1 / 1000
		busy = 0
		for (i = 2; i <= NF; i++) {
			split($i, kv, "="); k = kv[1]; v = kv[2]
			d[k] = (k in last && v >= last[k] && n > 0) ? (v - last[k]) / hz : 0
			if (k != "bench" && n > 0 && t > lt && d[k] / (t - lt) > 0.15) busy = 1
			last[k] = v; names[k] = 1
		}
		if (busy) {
			if (!open) { open = 1; start = t; delete acc }
			for (k in names) acc[k] += d[k]
			end = t
		} else if (open && t - end > 1.5) {
			flush()
		}
		lt = t; n++
	}
	function flush(   k, s) {
		open = 0
		if (end - start < 3) return
		s = strftime("%H:%M:%S", start, 1) sprintf(" %5.1f s:", end - start)
		for (k in acc) s = s sprintf(" %s %.1f core-s (%.2f)", k, acc[k], acc[k] / (end - start))
		print s
	}
	END { if (open) flush() }
	' "$2"
	;;
*)
	echo "usage: $0 sample NAME=PID... | segments FILE" >&2
	exit 2
	;;
esac
