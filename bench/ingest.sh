#!/usr/bin/env bash
# End-to-end ingest benchmark: log files on the agent -> queryable segments.
#
# Usage: bench/ingest.sh [TARGET_MB] [--bin PATH]
#   TARGET_MB  input size in MiB (default 1024)
#   --bin      custos binary to use (default: cargo build --release -p custos,
#              then $CARGO_TARGET_DIR/release/custos or target/release/custos)
#
# Builds a corpus by concatenating the nine loghub *_2k.log files (from
# ../shared/corpus, each given a final newline) round-robin into 8 files until
# TARGET_MB is reached; starts a server on 127.0.0.1 with its data dir in a
# scratch directory; creates a workspace; enrolls an agent; runs
# `custos agent run --once` (batch_max_events 10000, batch_max_bytes 4 MiB)
# over the 8 files; and measures the wall time from agent start until
# `SELECT count(*) FROM logs` returns the exact line count, agent and server
# CPU and peak RSS, on-disk sizes; then times three queries.
# Prints a report and, last, one line `RESULT {json}`.
#
# Environment: BENCH_DIR (scratch parent, default /tmp), KEEP=1 (keep the
# scratch dir), BENCH_RUNS (runs per query, default 3), AGENT_TIMEOUT,
# COUNT_TIMEOUT (seconds; see bench/lib.sh).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args 1024 "$@"
TARGET_MB=$BENCH_SIZE
TARGET_BYTES=$((TARGET_MB * 1048576))
NFILES=8

CORPUS=$BENCH_REPO/../shared/corpus/loghub
shopt -s nullglob
LOGS=("$CORPUS"/*/*_2k.log)
shopt -u nullglob
[ "${#LOGS[@]}" -eq 9 ] || die "expected 9 loghub logs in $CORPUS/*/*_2k.log, found ${#LOGS[@]}"

bench_scratch ingest
INPUT=$SCRATCH/input
mkdir -p "$INPUT" "$SCRATCH/src"

# Each source log, with a final newline; its size and its events (the agent
# skips empty lines, after stripping one trailing '\r').
SRC=()
SRC_BYTES=()
SRC_LINES=()
for f in "${LOGS[@]}"; do
    name=$(basename "$(dirname "$f")")
    dst=$SCRATCH/src/$name.log
    cp -- "$f" "$dst"
    if [ -s "$dst" ] && [ "$(tail -c 1 "$dst" | od -An -tx1 | tr -d ' ')" != 0a ]; then
        printf '\n' >>"$dst"
    fi
    SRC+=("$dst")
    SRC_BYTES+=("$(stat -c %s "$dst")")
    SRC_LINES+=("$(LC_ALL=C grep -cvE $'^\r?$' "$dst" || true)")
done

# Round-robin: log j goes to file k, both advancing, until the target is met.
log "corpus: building $NFILES files, target $TARGET_MB MiB"
total=0
lines=0
j=0
k=0
for ((k = 0; k < NFILES; k++)); do : >"$SCRATCH/list.$k"; done
k=0
while [ "$total" -lt "$TARGET_BYTES" ]; do
    printf '%s\n' "${SRC[j]}" >>"$SCRATCH/list.$k"
    total=$((total + SRC_BYTES[j]))
    lines=$((lines + SRC_LINES[j]))
    j=$(((j + 1) % ${#SRC[@]}))
    k=$(((k + 1) % NFILES))
done
written=0
for ((k = 0; k < NFILES; k++)); do
    out=$INPUT/part-$k.log
    : >"$out"
    if [ -s "$SCRATCH/list.$k" ]; then xargs -d '\n' cat -- <"$SCRATCH/list.$k" >"$out"; fi
    written=$((written + $(stat -c %s "$out")))
done
[ "$written" -eq "$total" ] || die "corpus: wrote $written bytes, expected $total"
RAW_BYTES=$total
LINES=$lines
log "corpus: $RAW_BYTES bytes, $LINES lines in $NFILES files"

start_server
setup_workspace bench-ingest
write_agent_config "$SCRATCH/agent.toml" "$INPUT/*.log"
ingest_measured "$SCRATCH/agent.toml" "$LINES"

printf '\n== custos ingest benchmark ==\n'
printf '%-38s %s (%s)\n' "binary" "$BIN" "$("$BIN" --version 2>/dev/null || echo '?')"
printf '%-38s %s cores, %s\n' "host" "$(nproc)" "$(uname -r)"
printf '%-38s %s files from 9 loghub logs, batch_max_events 10000, batch_max_bytes 4194304\n' "input" "$NFILES"
print_ingest_report "$RAW_BYTES" "$LINES"

printf '\n== queries (%s runs each) ==\n' "$BENCH_RUNS"
time_query count "SELECT count(*) FROM logs"
time_query group_by_file "SELECT file, count(*) FROM logs GROUP BY file ORDER BY 2 DESC"
time_query like_error "SELECT count(*) FROM logs WHERE message LIKE '%error%'"

INGEST_JSON=$(ingest_json "$RAW_BYTES" "$LINES")
BENCH_OK=1
stop_server
echo
printf 'RESULT %s\n' "$(jq -cn --arg bench ingest --argjson target_mib "$TARGET_MB" --argjson files "$NFILES" \
    --argjson ingest "$INGEST_JSON" --argjson queries "$QUERIES_JSON" '$ARGS.named')"
