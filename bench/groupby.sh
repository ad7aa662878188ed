#!/usr/bin/env bash
# Aggregation benchmark over many short synthetic log lines.
#
# Usage: bench/groupby.sh [EVENTS] [--bin PATH]
#   EVENTS  number of lines to ingest (default 10000000)
#   --bin   custos binary to use (default: cargo build --release -p custos,
#           then $CARGO_TARGET_DIR/release/custos or target/release/custos)
#
# Generates EVENTS lines like
#   2026-11-01T08:00:00.000Z INFO [svc-7] request id=1f0c9a2b took 123 ms
# (20 services, 10 files, deterministic), ships them through the same path as
# bench/ingest.sh (server on 127.0.0.1, workspace, enrolled agent, agent run
# --once, wait for the exact count(*)), then times
#   SELECT file, count(*) FROM logs GROUP BY file
#   SELECT count(*), avg(length(message)) FROM logs
# and checks both results against what was generated. Prints the ingest
# figures, the query results and times, and, last, `RESULT {json}`.
#
# Environment: BENCH_DIR, KEEP=1, BENCH_RUNS, AGENT_TIMEOUT, COUNT_TIMEOUT
# (see bench/lib.sh).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bench_args 10000000 "$@"
EVENTS=$BENCH_SIZE
NFILES=10
NSERVICES=20

bench_scratch groupby
INPUT=$SCRATCH/input
mkdir -p "$INPUT"

log "generating $EVENTS lines over $NFILES files"
t0=$(now_ns)
# Prints "raw_bytes total_message_chars" and, per file, "path count".
awk -v n="$EVENTS" -v dir="$INPUT" -v nf="$NFILES" -v ns="$NSERVICES" '
BEGIN {
    srand(42)
    split("INFO INFO INFO INFO INFO INFO WARN DEBUG ERROR INFO", lv, " ")
    for (f = 0; f < nf; f++) path[f] = sprintf("%s/app-%02d.log", dir, f)
    for (i = 0; i < n; i++) {
        f = i % nf
        s = int(rand() * ns)
        sec = int(i / 1000)
        line = sprintf("2026-11-%02dT%02d:%02d:%02d.%03dZ %s [svc-%d] request id=%08x took %d ms",
            1 + int(sec / 86400) % 30, int(sec / 3600) % 24, int(sec / 60) % 60, sec % 60, i % 1000,
            lv[1 + int(rand() * 10)], s, int(rand() * 4294967295), int(rand() * rand() * 2000))
        print line > path[f]
        chars += length(line)
        cnt[f]++
    }
    for (f = 0; f < nf; f++) close(path[f])
    printf "%.0f %.0f\n", chars + n, chars
    for (f = 0; f < nf; f++) printf "%s %.0f\n", path[f], cnt[f]
}' >"$SCRATCH/expected.txt"
read -r GEN_BYTES GEN_CHARS <"$SCRATCH/expected.txt"
RAW_BYTES=$(cat "$INPUT"/*.log | wc -c)
[ "$RAW_BYTES" -eq "$GEN_BYTES" ] || die "generated $RAW_BYTES bytes, expected $GEN_BYTES"
GEN_S=$(calc %.2f "($(now_ns) - $t0) / 1e9")
EXPECTED_AVG=$(calc %.6f "$GEN_CHARS / $EVENTS")
log "generated $RAW_BYTES bytes in $GEN_S s (average line $EXPECTED_AVG chars)"

start_server
setup_workspace bench-groupby
write_agent_config "$SCRATCH/agent.toml" "$INPUT/*.log"
ingest_measured "$SCRATCH/agent.toml" "$EVENTS"

printf '\n== custos group-by benchmark ==\n'
printf '%-38s %s (%s)\n' "binary" "$BIN" "$("$BIN" --version 2>/dev/null || echo '?')"
printf '%-38s %s cores, %s\n' "host" "$(nproc)" "$(uname -r)"
printf '%-38s %s synthetic lines, %s services, %s files (generated in %s s)\n' "input" "$EVENTS" "$NSERVICES" "$NFILES" "$GEN_S"
print_ingest_report "$RAW_BYTES" "$EVENTS"

printf '\n== queries (%s runs each) ==\n' "$BENCH_RUNS"
time_query group_by_file "SELECT file, count(*) FROM logs GROUP BY file"
time_query count_avg_length "SELECT count(*), avg(length(message)) FROM logs"

# Check the answers against the generator.
got_files=$("$BIN" query --workspace "$WS_ID" "SELECT file, count(*) AS n FROM logs GROUP BY file ORDER BY file" --output json |
    jq -r '.[] | "\(.file) \(.n)"')
want_files=$(tail -n +2 "$SCRATCH/expected.txt" | LC_ALL=C sort)
[ "$got_files" = "$want_files" ] || die "per-file counts differ from the generated ones:
got:
$got_files
want:
$want_files"
got_avg=$("$BIN" query --workspace "$WS_ID" "SELECT count(*) AS n, avg(length(message)) AS a FROM logs" --output json |
    jq -r '.[0] | "\(.n) \(.a)"')
read -r got_n got_a <<<"$got_avg"
[ "$got_n" = "$EVENTS" ] || die "count(*) = $got_n, expected $EVENTS"
awk -v a="$got_a" -v b="$EXPECTED_AVG" 'BEGIN { d = a - b; exit !(d < 0.001 && d > -0.001) }' ||
    die "avg(length(message)) = $got_a, expected $EXPECTED_AVG"
printf '\nresults checked: %s files with the generated counts; count %s; avg(length(message)) %s (expected %s)\n' \
    "$NFILES" "$got_n" "$got_a" "$EXPECTED_AVG"

INGEST_JSON=$(ingest_json "$RAW_BYTES" "$EVENTS")
BENCH_OK=1
stop_server
echo
printf 'RESULT %s\n' "$(jq -cn --arg bench groupby --argjson events "$EVENTS" --argjson files "$NFILES" \
    --argjson services "$NSERVICES" --argjson avg_message_chars "$got_a" \
    --argjson ingest "$INGEST_JSON" --argjson queries "$QUERIES_JSON" '$ARGS.named')"
