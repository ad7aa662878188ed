# shellcheck shell=bash
# Shared helpers for the custos end-to-end benchmarks (bench/*.sh).
# Source it; do not run it. It expects `set -euo pipefail` in the caller.
#
# Environment understood by every benchmark:
#   BENCH_DIR        parent of the scratch directory (default /tmp); the
#                    benchmark makes its own fresh subdirectory in it
#   KEEP=1           keep the scratch directory (corpus, data dir, logs)
#   CARGO_TARGET_DIR where `cargo build --release` puts the binary (no --bin)
#   BENCH_RUNS       runs per timed query (default 3)
#   AGENT_TIMEOUT    seconds the agent may take to ship everything (default 7200)
#   COUNT_TIMEOUT    seconds to wait, after the agent exits, for the exact
#                    count to become queryable (default 600)
#
# Units: 1 MiB = 2^20 bytes; every rate is in MiB/s or events/s.

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_RUNS=${BENCH_RUNS:-3}
AGENT_TIMEOUT=${AGENT_TIMEOUT:-7200}
COUNT_TIMEOUT=${COUNT_TIMEOUT:-600}
CLK_TCK=$(getconf CLK_TCK)

BIN=""
SCRATCH=""
SERVER_PID=""
AGENT_PID=""
SERVER_URL=""
SERVER_PIN=""
WS_ID=""
ENROLL_KEY=""
AGENT_STATE=""
BENCH_OK=0
QUERIES_JSON="[]"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
now_ns() { date +%s%N; }

# calc FORMAT EXPR: floating point arithmetic (awk), e.g. calc %.2f "1/3".
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# json_str S: S as a JSON (and TOML basic) string literal.
json_str() { jq -Rn --arg s "$1" '$s'; }

# bench_args DEFAULT_SIZE "$@": sets BENCH_SIZE (first positional argument)
# and BIN (--bin PATH, else a fresh release build).
bench_args() {
    local default=$1
    shift
    BENCH_SIZE=""
    while [ $# -gt 0 ]; do
        case $1 in
        --bin)
            [ $# -ge 2 ] || die "--bin needs a path"
            BIN=$2
            shift 2
            ;;
        --bin=*)
            BIN=${1#--bin=}
            shift
            ;;
        -h | --help)
            awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
            exit 0
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [ -z "$BENCH_SIZE" ] || die "unexpected argument $1"
            BENCH_SIZE=$1
            shift
            ;;
        esac
    done
    BENCH_SIZE=${BENCH_SIZE:-$default}
    [[ $BENCH_SIZE =~ ^[1-9][0-9]*$ ]] || die "size must be a positive integer, got '$BENCH_SIZE'"
    if [ -z "$BIN" ]; then
        log "building: cargo build --release -p custos"
        (cd "$BENCH_REPO" && cargo build --release -p custos) >&2
        local target=${CARGO_TARGET_DIR:-target}
        case $target in /*) ;; *) target=$BENCH_REPO/$target ;; esac
        BIN=$target/release/custos
    fi
    [ -x "$BIN" ] || die "custos binary not found or not executable: $BIN"
    BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
    local missing=()
    command -v jq >/dev/null || missing+=(jq)
    [ -x /usr/bin/time ] || missing+=(time)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing missing packages: ${missing[*]}"
        { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >&2 || die "cannot install ${missing[*]} (apt-get install ${missing[*]})"
    fi
}

# bench_scratch NAME: make the scratch directory and install the exit trap.
bench_scratch() {
    local parent=${BENCH_DIR:-/tmp}
    mkdir -p "$parent"
    parent=$(cd "$parent" && pwd)
    SCRATCH=$(mktemp -d "$parent/custos-bench-$1.XXXXXX")
    AGENT_STATE=$SCRATCH/agent-state
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "scratch directory: $SCRATCH"
}

# proc_state PID: the process state letter, or nothing if it is gone.
proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    printf '%s' "${stat%% *}"
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local pid=$SERVER_PID state i rc=0
    SERVER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        state=$(proc_state "$pid")
        if [ -z "$state" ] || [ "$state" = Z ]; then break; fi
        sleep 0.1
    done
    state=$(proc_state "$pid")
    if [ -n "$state" ] && [ "$state" != Z ]; then
        log "server $pid did not stop within 30 s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    [ "$rc" -eq 0 ] || log "warning: server exited with status $rc (see server.log)"
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$AGENT_PID" ]; then
        log "stopping the agent"
        kill -TERM "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
        AGENT_PID=""
    fi
    stop_server
    if [ "$BENCH_OK" != 1 ] && [ -n "$SCRATCH" ]; then
        local f
        for f in "$SCRATCH/server.log" "$SCRATCH/agent.log"; do
            if [ -s "$f" ]; then
                log "last lines of $f:"
                tail -n 15 "$f" >&2
            fi
        done
    fi
    if [ -n "$SCRATCH" ] && [ -d "$SCRATCH" ]; then
        if [ "${KEEP:-0}" = 1 ]; then
            log "kept scratch directory $SCRATCH"
        else
            rm -rf -- "$SCRATCH"
        fi
    fi
    exit "$rc"
}

# start_server: a fresh server on 127.0.0.1 with its data dir in the scratch
# dir; exports CUSTOS_SERVER, CUSTOS_CA and CUSTOS_TOKEN_FILE for the CLI.
start_server() {
    local data=$SCRATCH/data info=$SCRATCH/data/server.json i
    "$BIN" server --data-dir "$data" --listen 127.0.0.1:0 --output json \
        >"$SCRATCH/server.out" 2>"$SCRATCH/server.log" &
    SERVER_PID=$!
    for ((i = 0; i < 600; i++)); do
        if [ -s "$info" ] && jq -e .url "$info" >/dev/null 2>&1; then break; fi
        local state
        state=$(proc_state "$SERVER_PID")
        if [ -z "$state" ] || [ "$state" = Z ]; then die "server exited during startup"; fi
        sleep 0.1
    done
    jq -e .url "$info" >/dev/null 2>&1 || die "server did not write $info within 60 s"
    SERVER_URL=$(jq -r .url "$info")
    SERVER_PIN=$(jq -r .pin "$info")
    case $SERVER_URL in
    https://127.0.0.1:*) ;;
    *) die "server is not on 127.0.0.1: $SERVER_URL" ;;
    esac
    CUSTOS_SERVER=$SERVER_URL
    CUSTOS_CA=$(jq -r .ca "$info")
    CUSTOS_TOKEN_FILE=$(jq -r .admin_token_file "$info")
    export CUSTOS_SERVER CUSTOS_CA CUSTOS_TOKEN_FILE
    unset CUSTOS_TOKEN
    log "server pid $SERVER_PID at $SERVER_URL"
}

# setup_workspace NAME: create a workspace and enroll an agent into it.
setup_workspace() {
    local out
    out=$("$BIN" workspace create "$1" --region local --output json) || die "workspace create failed"
    WS_ID=$(jq -r .id <<<"$out")
    ENROLL_KEY=$(jq -r .enrollment_key <<<"$out")
    # Service admins do not read workspace data: queries run as an owner.
    out=$("$BIN" principal create "bench-owner-$1" --output json) || die "principal create failed"
    jq -r .token <<<"$out" >"$SCRATCH/owner.token"
    chmod 600 "$SCRATCH/owner.token"
    "$BIN" role grant "bench-owner-$1" owner --workspace "$WS_ID" --output json >/dev/null || die "role grant failed"
    CUSTOS_TOKEN_FILE=$SCRATCH/owner.token
    export CUSTOS_TOKEN_FILE
    "$BIN" agent enroll --server "$SERVER_URL" --enrollment-key "$ENROLL_KEY" --pin "$SERVER_PIN" \
        --state-dir "$AGENT_STATE" --hostname bench-host --output json >/dev/null ||
        die "agent enroll failed"
    log "workspace $WS_ID, agent enrolled in $AGENT_STATE"
}

# write_agent_config FILE GLOB: one file source over GLOB into table logs,
# consent level full (below warning a log line's level is full; at the
# default level, enhanced, most lines would not be collected).
write_agent_config() {
    cat >"$1" <<EOF
[agent]
hostname = "bench-host"
batch_max_events = 10000
batch_max_bytes = 4194304

[[sources]]
type = "file"
paths = [$(json_str "$2")]
table = "logs"
start_at = "beginning"

[telemetry]
level = "full"
EOF
}

# server_cpu_ticks: utime+stime of the server (all threads), in clock ticks.
server_cpu_ticks() {
    local stat f
    stat=$(cat "/proc/$SERVER_PID/stat") || die "server process $SERVER_PID is gone"
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

# server_hwm_kib: the server's peak resident set size, in KiB.
server_hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status"; }

# count_logs: SELECT count(*) FROM logs (the query flushes the server's buffers).
count_logs() {
    "$BIN" query --workspace "$WS_ID" "SELECT count(*) AS n FROM logs" --output json | jq -r '.[0].n'
}

# ingest_measured CONFIG EXPECTED_EVENTS: run the agent once over CONFIG and
# wait until count(*) equals EXPECTED_EVENTS. Sets ING_* results.
ingest_measured() {
    local config=$1 expected=$2 t0 t1 c0 c1 n="" deadline
    c0=$(server_cpu_ticks)
    log "agent: shipping $expected events"
    t0=$(now_ns)
    # In the background, so that a signal to this script interrupts `wait`
    # and the exit trap stops the agent as well.
    timeout "$AGENT_TIMEOUT" /usr/bin/time -f '%e %U %S %M' -o "$SCRATCH/agent.time" \
        "$BIN" agent run --once --give-up-after-secs 60 --state-dir "$AGENT_STATE" \
        --config "$config" --output json >"$SCRATCH/agent.json" 2>"$SCRATCH/agent.log" &
    AGENT_PID=$!
    local rc=0
    wait "$AGENT_PID" || rc=$?
    AGENT_PID=""
    [ "$rc" -eq 0 ] || die "agent run failed (status $rc; 124 = timed out after ${AGENT_TIMEOUT}s)"
    ING_AGENT_EXIT_NS=$(now_ns)
    deadline=$(($(date +%s) + COUNT_TIMEOUT))
    while :; do
        n=$(count_logs) || die "count query failed"
        [ "$n" = "$expected" ] && break
        [ "$n" -gt "$expected" ] && die "count(*) = $n exceeds the $expected events written"
        [ "$(date +%s)" -lt "$deadline" ] || die "count(*) = $n, not $expected, ${COUNT_TIMEOUT}s after the agent exited"
        sleep 0.2
    done
    t1=$(now_ns)
    c1=$(server_cpu_ticks)
    local a
    read -r -a a <"$SCRATCH/agent.time"
    ING_WALL_S=$(calc %.3f "($t1 - $t0) / 1e9")
    ING_AGENT_WALL_S=$(calc %.3f "($ING_AGENT_EXIT_NS - $t0) / 1e9")
    ING_AGENT_CPU_S=$(calc %.2f "${a[1]} + ${a[2]}")
    ING_AGENT_RSS_MIB=$(calc %.1f "${a[3]} / 1024")
    ING_SERVER_CPU_S=$(calc %.2f "($c1 - $c0) / $CLK_TCK")
    ING_SERVER_RSS_MIB=$(calc %.1f "$(server_hwm_kib) / 1024")
    ING_SUMMARY=$(jq -c . "$SCRATCH/agent.json")
    ING_AGENT_EVENTS=$(jq -r .events <<<"$ING_SUMMARY")
    ING_BYTES_SENT=$(jq -r .bytes_sent <<<"$ING_SUMMARY")
    [ "$ING_AGENT_EVENTS" = "$expected" ] || log "warning: the agent reports $ING_AGENT_EVENTS events, expected $expected"
}

# rate AMOUNT SECONDS: AMOUNT/SECONDS, or 0 when SECONDS is 0.
rate() { calc %.1f "($2 > 0) ? $1 / $2 : 0"; }

# dir_bytes DIR: apparent size of the files under DIR, in bytes (0 if absent).
dir_bytes() {
    if [ -d "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi
}

# print_ingest_report RAW_BYTES EVENTS: the ingest section of a report.
print_ingest_report() {
    local bytes=$1 events=$2 mib
    mib=$(calc %.6f "$bytes / 1048576")
    SEG_BYTES=$(dir_bytes "$SCRATCH/data/segments")
    WAL_BYTES=$(dir_bytes "$SCRATCH/data/wal")
    COMPRESSION=$(calc %.2f "($SEG_BYTES > 0) ? $bytes / $SEG_BYTES : 0")
    WIRE_RATIO=$(calc %.2f "($ING_BYTES_SENT > 0) ? $bytes / $ING_BYTES_SENT : 0")
    printf '%-38s %s bytes (%.1f MiB)\n' "raw input" "$bytes" "$mib"
    printf '%-38s %s\n' "lines (events)" "$events"
    printf '%-38s %s s (agent exited after %s s)\n' "wall, agent start -> exact count(*)" "$ING_WALL_S" "$ING_AGENT_WALL_S"
    printf '%-38s %s MiB/s   %s events/s\n' "throughput, overall" "$(rate "$mib" "$ING_WALL_S")" "$(rate "$events" "$ING_WALL_S")"
    printf '%-38s %s MiB/s   %s events/s   (server CPU %s s)\n' "per server core (server CPU-second)" \
        "$(rate "$mib" "$ING_SERVER_CPU_S")" "$(rate "$events" "$ING_SERVER_CPU_S")" "$ING_SERVER_CPU_S"
    printf '%-38s %s MiB/s   %s events/s   (agent CPU %s s)\n' "per agent core (agent CPU-second)" \
        "$(rate "$mib" "$ING_AGENT_CPU_S")" "$(rate "$events" "$ING_AGENT_CPU_S")" "$ING_AGENT_CPU_S"
    printf '%-38s agent %s MiB, server %s MiB\n' "peak RSS" "$ING_AGENT_RSS_MIB" "$ING_SERVER_RSS_MIB"
    printf '%-38s %s\n' "agent summary" "$ING_SUMMARY"
    printf '%-38s segments/ %s bytes (%.1f MiB), wal/ %s bytes (%.1f MiB)\n' "on disk (data dir)" \
        "$SEG_BYTES" "$(calc %.3f "$SEG_BYTES / 1048576")" "$WAL_BYTES" "$(calc %.3f "$WAL_BYTES / 1048576")"
    printf '%-38s %sx raw/segments   (wire: %sx raw/bytes_sent)\n' "compression" "$COMPRESSION" "$WIRE_RATIO"
}

# ingest_json RAW_BYTES EVENTS: the ingest figures as a JSON object.
ingest_json() {
    local bytes=$1 events=$2 mib
    mib=$(calc %.6f "$bytes / 1048576")
    jq -cn \
        --argjson raw_bytes "$bytes" --argjson events "$events" \
        --argjson wall_s "$ING_WALL_S" --argjson agent_wall_s "$ING_AGENT_WALL_S" \
        --argjson mib_per_s "$(rate "$mib" "$ING_WALL_S")" \
        --argjson events_per_s "$(rate "$events" "$ING_WALL_S")" \
        --argjson server_cpu_s "$ING_SERVER_CPU_S" --argjson agent_cpu_s "$ING_AGENT_CPU_S" \
        --argjson mib_per_server_cpu_s "$(rate "$mib" "$ING_SERVER_CPU_S")" \
        --argjson events_per_server_cpu_s "$(rate "$events" "$ING_SERVER_CPU_S")" \
        --argjson mib_per_agent_cpu_s "$(rate "$mib" "$ING_AGENT_CPU_S")" \
        --argjson events_per_agent_cpu_s "$(rate "$events" "$ING_AGENT_CPU_S")" \
        --argjson agent_peak_rss_mib "$ING_AGENT_RSS_MIB" --argjson server_peak_rss_mib "$ING_SERVER_RSS_MIB" \
        --argjson segments_bytes "$SEG_BYTES" --argjson wal_bytes "$WAL_BYTES" \
        --argjson compression_ratio "$COMPRESSION" --argjson wire_ratio "$WIRE_RATIO" \
        --argjson agent "$ING_SUMMARY" \
        '$ARGS.named'
}

# stats_ms VALUES...: "min median" of the values.
stats_ms() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%s %s\n", v[1], v[int((NR + 1) / 2)] }'
}

# time_query LABEL SQL: run SQL BENCH_RUNS times. Reports, per run, the
# server's elapsed_ms (from the CLI's table footer "(N rows, X ms)") and the
# wall time of the whole CLI call (process start, TLS, query, output). Prints
# the result of the first run and a summary line; appends to QUERIES_JSON.
time_query() {
    local label=$1 sql=$2 i t0 t1 out first="" srv wall srv_all=() wall_all=()
    for ((i = 0; i < BENCH_RUNS; i++)); do
        t0=$(now_ns)
        out=$("$BIN" query --workspace "$WS_ID" "$sql" --output table) || die "query failed: $sql"
        t1=$(now_ns)
        srv=$(tail -n 1 <<<"$out" | sed -nE 's/^\([0-9]+ rows?, ([0-9.]+) ms\)$/\1/p')
        [ -n "$srv" ] || die "cannot read elapsed ms from the query output: $(tail -n 1 <<<"$out")"
        wall=$(calc %.1f "($t1 - $t0) / 1e6")
        srv_all+=("$srv")
        wall_all+=("$wall")
        [ -n "$first" ] || first=$out
    done
    local s w
    read -r -a s <<<"$(stats_ms "${srv_all[@]}")"
    read -r -a w <<<"$(stats_ms "${wall_all[@]}")"
    printf '\n-- %s: %s\n' "$label" "$sql"
    local l
    while IFS= read -r l; do printf '   %s\n' "$l"; done <<<"$first"
    printf '   server elapsed_ms: min %s  median %s   | CLI wall ms: min %s  median %s   (%s runs: server %s; wall %s)\n' \
        "${s[0]}" "${s[1]}" "${w[0]}" "${w[1]}" "$BENCH_RUNS" "${srv_all[*]}" "${wall_all[*]}"
    QUERIES_JSON=$(jq -c --arg lbl "$label" --arg sql "$sql" \
        --argjson server_min "${s[0]}" --argjson server_median "${s[1]}" \
        --argjson wall_min "${w[0]}" --argjson wall_median "${w[1]}" \
        '. + [{"label": $lbl, "sql": $sql, "server_ms_min": $server_min, "server_ms_median": $server_median,
               "cli_wall_ms_min": $wall_min, "cli_wall_ms_median": $wall_median}]' <<<"$QUERIES_JSON")
}
