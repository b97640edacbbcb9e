#!/usr/bin/env bash
# Runs Spate's and Flink's Nexmark queries back to back over the same events
# and prints events/s per query for both, with the machine's 1-minute load
# before each run. Answers are checked against Spate's reference.
#
# usage: peers/flink-nexmark/run.sh [EVENTS] [ROUNDS] [QUERIES]
#   EVENTS  events to generate (default 1000000)
#   ROUNDS  pairs of runs per query, alternating Spate then Flink (default 2)
#   QUERIES comma-separated (default q0,q1,q2,q3,q4,q5,q7,q8)
# env: SPATE (default target/release/spate), FLINK_PYTHON (default
# /work/venv-flink/bin/python), OUT (default /tmp/flink-nexmark), PARALLELISM
# (default 2, for both), WORKERS (Spate's worker processes, default 3).
set -euo pipefail

EVENTS=${1:-1000000}
ROUNDS=${2:-2}
QUERIES=${3:-q0,q1,q2,q3,q4,q5,q7,q8}
HERE=$(cd "$(dirname "$0")" && pwd)
SPATE=${SPATE:-target/release/spate}
FLINK_PYTHON=${FLINK_PYTHON:-/work/venv-flink/bin/python}
OUT=${OUT:-/tmp/flink-nexmark}
PARALLELISM=${PARALLELISM:-2}
WORKERS=${WORKERS:-3}

load() { cut -d' ' -f1 /proc/loadavg; }

mkdir -p "$OUT"
"$SPATE" nexmark generate --events "$EVENTS" --out "$OUT/input" >&2
RESULTS="$OUT/results.tsv"
printf 'query\tround\tsystem\tload_1min\tevents_per_s\tanswers\n' > "$RESULTS"

for query in ${QUERIES//,/ }; do
  for round in $(seq 1 "$ROUNDS"); do
    dir="$OUT/spate-$query-$round"
    rm -rf "$dir"
    before=$(load)
    "$SPATE" nexmark run --query "$query" --events "$EVENTS" --parallelism "$PARALLELISM" \
      --workers "$WORKERS" --checkpoint-ms 0 --out "$dir" > "$dir.log" 2>&1 \
      || { echo "spate $query failed, see $dir.log" >&2; exit 1; }
    rate=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(round(r['events']/r['elapsed_s']), 'PASSED' if r['passed'] else 'FAILED')" "$dir/report.json")
    printf '%s\t%s\tspate\t%s\t%s\t%s\n' "$query" "$round" "$before" ${rate} >> "$RESULTS"

    dir="$OUT/flink-$query-$round"
    rm -rf "$dir"
    mkdir -p "$dir"
    before=$(load)
    "$FLINK_PYTHON" "$HERE/nexmark_flink.py" --events "$OUT/input/events.csv" --query "$query" \
      --out "$dir" --parallelism "$PARALLELISM" > "$dir/report.json" 2> "$dir.log" \
      || { echo "flink $query failed, see $dir.log" >&2; exit 1; }
    rate=$(python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(round(r['events_per_s']))" "$dir/report.json")
    if [ -f "$dir/$query.csv" ]; then
      check=$(python3 "$HERE/compare.py" "$OUT/input/reference/$query.csv" "$dir/$query.csv" | head -c 300 | tr '\n\t' '  ' || true)
    else
      check="not checked (changelog into a blackhole)"
    fi
    printf '%s\t%s\tflink\t%s\t%s\t%s\n' "$query" "$round" "$before" "$rate" "$check" >> "$RESULTS"
    tail -2 "$RESULTS" >&2
  done
done
column -t -s $'\t' "$RESULTS"
