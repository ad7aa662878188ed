#!/usr/bin/env bash
# Agent footprint benchmark (issue 4): the agent's CPU and resident memory at
# idle and while tailing 10,000 log lines/s, with the transparency ledger on.
#
# Usage: bench/agent.sh [options]
#   --idle-secs N     idle phase length (default 30)
#   --load-secs N     load phase length (default 60)
#   --rate N          lines appended per second in the load phase (default 10000)
#   --runtime R       the agent's tokio runtime: multi-thread (default; what
#                     `custos agent run` uses) or current-thread
#   --worker-threads N, --max-blocking-threads N
#                     bound the runtime's threads (default: tokio's defaults,
#                     as in `custos agent run`)
#   --bin PATH        custos binary for the server and the CLI (default: a
#                     debug build, `cargo build -p custos`)
#   --agent PATH      agent binary (default: `cargo build --release -p
#                     custos-agent --example agent`, the same `run()` as
#                     `custos agent run`, built without the server)
#
# Starts a server on 127.0.0.1 (scratch data dir), creates a workspace,
# enrolls an agent with `custos agent enroll`, writes an agent config with one
# file source over an empty log directory, `[telemetry] level = "full"` (every
# line is collected) and a policy_file that does not exist (the ledger is
# always on), and starts the agent in the background. Default batching
# (5000 events, 1 MiB, flush every 1 s).
#
# Phase 1, idle: after a 5 s settling time, no new lines for --idle-secs;
# the agent's utime+stime (/proc/PID/stat) over the window as % of one core,
# VmRSS and VmHWM (/proc/PID/status).
# Phase 2, load: a Python generator appends loghub lines (the nine *_2k.log
# files of ../shared/corpus interleaved, ~156 bytes a line on average, every
# severity) at --rate lines/s in 10 ms slices for --load-secs. Agent CPU is
# measured from the generator's start until the server stores the last line,
# divided by the generator's duration (the CPU needed per second of input);
# also the CPU inside the window alone. Peak RSS is VmHWM; VmRSS is sampled
# every second too.
# Then: SELECT count(*) FROM logs (as the workspace owner) must equal the
# lines written; the agent is stopped with SIGTERM; `custos telemetry
# verify-ledger` must pass; the ledger must have grown.
#
# The machine's load average and the busy share of all CPUs (/proc/stat)
# during each phase are printed too: the agent's figures are its own CPU time,
# but a busy machine slows it (cache, scheduling).
#
# Prints a report and, last, one line `RESULT {json}`.
# Environment: BENCH_DIR (scratch parent, default /tmp), KEEP=1 (keep the
# scratch dir), COUNT_TIMEOUT (see bench/lib.sh).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDLE_SECS=30
LOAD_SECS=60
RATE=10000
RUNTIME=multi-thread
AGENT_BIN=""
RT_ARGS=()
SETTLE_SECS=5
# The OpenTelemetry Collector's own load test (filelog receiver at 10k
# lines/s), as published; the Collector is not installable here.
OTEL_CPU_PCT=10.5

while [ $# -gt 0 ]; do
    case $1 in
    --idle-secs | --load-secs | --rate | --runtime | --bin | --agent | --worker-threads | --max-blocking-threads)
        [ $# -ge 2 ] || die "$1 needs a value"
        case $1 in
        --idle-secs) IDLE_SECS=$2 ;;
        --load-secs) LOAD_SECS=$2 ;;
        --rate) RATE=$2 ;;
        --runtime) RUNTIME=$2 ;;
        --bin) BIN=$2 ;;
        --agent) AGENT_BIN=$2 ;;
        *)
            [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
            RT_ARGS+=("$1" "$2")
            ;;
        esac
        shift 2
        ;;
    -h | --help)
        awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
for v in IDLE_SECS LOAD_SECS RATE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "${v,,} must be a positive integer, got '${!v}'"
done
case $RUNTIME in multi-thread | current-thread) ;; *) die "--runtime must be multi-thread or current-thread" ;; esac
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
command -v python3 >/dev/null || die "python3 is needed"

TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$BENCH_REPO/$TARGET ;; esac
if [ -z "$BIN" ]; then
    log "building: cargo build -p custos (debug; the server only stores what the agent sends)"
    (cd "$BENCH_REPO" && cargo build -p custos) >&2
    BIN=$TARGET/debug/custos
fi
if [ -z "$AGENT_BIN" ]; then
    log "building: cargo build --release -p custos-agent --example agent"
    (cd "$BENCH_REPO" && cargo build --release -p custos-agent --example agent) >&2
    AGENT_BIN=$TARGET/release/examples/agent
fi
for b in "$BIN" "$AGENT_BIN"; do [ -x "$b" ] || die "binary not found or not executable: $b"; done
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
AGENT_BIN=$(cd "$(dirname "$AGENT_BIN")" && pwd)/$(basename "$AGENT_BIN")

CORPUS=$BENCH_REPO/../shared/corpus/loghub
shopt -s nullglob
LOGS=("$CORPUS"/*/*_2k.log)
shopt -u nullglob
[ "${#LOGS[@]}" -eq 9 ] || die "expected 9 loghub logs in $CORPUS/*/*_2k.log, found ${#LOGS[@]}"

bench_scratch agent
LOGDIR=$SCRATCH/logs
mkdir -p "$LOGDIR"
: >"$LOGDIR/app.log"

# --- helpers -----------------------------------------------------------------

# agent_ticks: utime+stime of the agent (all threads), in clock ticks.
agent_ticks() {
    local stat f
    stat=$(cat "/proc/$AGENT_PID/stat") || die "agent process $AGENT_PID is gone (see agent.log)"
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}
# agent_status_kib FIELD: VmRSS or VmHWM of the agent, in KiB.
agent_status_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$AGENT_PID/status"; }
# agent_threads: the agent's thread count.
agent_threads() { awk '$1 == "Threads:" { print $2 }' "/proc/$AGENT_PID/status"; }
# cpu_jiffies: "busy total" jiffies of all CPUs (/proc/stat).
cpu_jiffies() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9 && i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
# busy_pct "B0 T0" "B1 T1": busy share of all CPUs between two cpu_jiffies.
busy_pct() {
    local a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    calc %.1f "((${b[1]} - ${a[1]}) > 0) ? 100 * (${b[0]} - ${a[0]}) / (${b[1]} - ${a[1]}) : 0"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# The ledger prunes its oldest segments beyond ledger_max_bytes (256 MiB by
# default, about 75 s at 10,000 lines/s), so its size is not what was
# written: ledger_track records the largest size seen of every segment file
# (called every 0.2 s under load; a segment is deleted long after it is
# sealed), and ledger_bytes sums them.
declare -A SEG_MAX=()
ledger_track() {
    local name size
    while read -r name size; do
        [ -n "$name" ] || continue
        if [ -z "${SEG_MAX[$name]:-}" ] || [ "$size" -gt "${SEG_MAX[$name]}" ]; then SEG_MAX[$name]=$size; fi
    done < <(stat -c '%n %s' "$AGENT_STATE"/ledger/seg-*.ledger 2>/dev/null || true)
}
ledger_bytes() {
    local t=0 k
    ledger_track
    for k in "${!SEG_MAX[@]}"; do t=$((t + SEG_MAX[$k])); done
    echo "$t"
}
mib() { calc %.1f "$1 / 1024"; }

# --- setup -------------------------------------------------------------------

start_server
setup_workspace bench-agent
CONFIG=$SCRATCH/agent.toml
cat >"$CONFIG" <<EOF
[agent]
hostname = "bench-host"

[[sources]]
type = "file"
paths = [$(json_str "$LOGDIR/*.log")]
table = "logs"
start_at = "beginning"

[telemetry]
level = "full"
policy_file = $(json_str "$SCRATCH/no-such-policy.toml")
EOF

RUNTIME_DESC="$RUNTIME${RT_ARGS[*]+ ${RT_ARGS[*]}}"
log "agent: $AGENT_BIN (runtime $RUNTIME_DESC)"
"$AGENT_BIN" --state-dir "$AGENT_STATE" --config "$CONFIG" --runtime "$RUNTIME" ${RT_ARGS[@]+"${RT_ARGS[@]}"} \
    >"$SCRATCH/agent.json" 2>"$SCRATCH/agent.log" &
AGENT_PID=$!
sleep "$SETTLE_SECS"
[ -n "$(proc_state "$AGENT_PID")" ] && [ "$(proc_state "$AGENT_PID")" != Z ] || die "the agent exited during startup"
ledger_track
LEDGER0=$(ledger_bytes)

# --- phase 1: idle -------------------------------------------------------------

log "idle: ${IDLE_SECS}s with no new lines"
LA_IDLE0=$(loadavg)
J0=$(cpu_jiffies)
C0=$(agent_ticks)
T0=$(now_ns)
sleep "$IDLE_SECS"
C1=$(agent_ticks)
T1=$(now_ns)
J1=$(cpu_jiffies)
LA_IDLE1=$(loadavg)
IDLE_WALL=$(calc %.3f "($T1 - $T0) / 1e9")
IDLE_CPU_S=$(calc %.2f "($C1 - $C0) / $CLK_TCK")
IDLE_CPU_PCT=$(calc %.3f "100 * $IDLE_CPU_S / $IDLE_WALL")
IDLE_RSS_KIB=$(agent_status_kib VmRSS)
IDLE_HWM_KIB=$(agent_status_kib VmHWM)
IDLE_THREADS=$(agent_threads)
IDLE_BUSY=$(busy_pct "$J0" "$J1")
ledger_track
LEDGER1=$(ledger_bytes)

# --- phase 2: load -------------------------------------------------------------

# gen.py FILE RATE SECS CORPUS...: append the corpus lines, interleaved, at RATE
# lines/s in 10 ms slices for SECS; prints "lines bytes seconds late_slices".
cat >"$SCRATCH/gen.py" <<'EOF'
import os, sys, time
path, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
files = [open(p, "rb").read().replace(b"\r\n", b"\n").split(b"\n") for p in sys.argv[4:]]
files = [[l.rstrip(b"\r") + b"\n" for l in f if l.strip()] for f in files]
lines = [f[i % len(f)] for i in range(max(map(len, files))) for f in files]
blob = b"".join(lines)
offs = [0]
for l in lines:
    offs.append(offs[-1] + len(l))
n_lines = len(lines)
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
# Tell the caller the corpus is loaded: the measured window starts now.
open(sys.argv[0] + ".ready", "w").close()
slice_s = 0.01
written = nbytes = late = 0
pos = 0
t0 = time.monotonic()
deadline = t0 + secs
total = int(rate * secs)
k = 0
while written < total:
    k += 1
    due = min(total, int(rate * slice_s * k))
    want = due - written
    while want > 0:
        take = min(want, n_lines - pos)
        chunk = blob[offs[pos]:offs[pos + take]]
        os.write(fd, chunk)
        nbytes += len(chunk)
        written += take
        want -= take
        pos = (pos + take) % n_lines
    wake = t0 + slice_s * k
    now = time.monotonic()
    if now < wake:
        time.sleep(wake - now)
    elif now - wake > slice_s:
        late += 1
os.close(fd)
print(written, nbytes, "%.3f" % (time.monotonic() - t0), late)
EOF

log "load: ${RATE} lines/s for ${LOAD_SECS}s"
LA_LOAD0=$(loadavg)
python3 "$SCRATCH/gen.py" "$LOGDIR/app.log" "$RATE" "$LOAD_SECS" "${LOGS[@]}" >"$SCRATCH/gen.out" &
GEN_PID=$!
while [ ! -e "$SCRATCH/gen.py.ready" ]; do
    [ -n "$(proc_state "$GEN_PID")" ] && [ "$(proc_state "$GEN_PID")" != Z ] || die "the generator exited before starting"
    sleep 0.01
done
J0=$(cpu_jiffies)
C0=$(agent_ticks)
T0=$(now_ns)
RSS_MAX_KIB=0
LA1_SUM=0
LA1_N=0
while [ -n "$(proc_state "$GEN_PID")" ] && [ "$(proc_state "$GEN_PID")" != Z ]; do
    r=$(agent_status_kib VmRSS)
    [ "$r" -gt "$RSS_MAX_KIB" ] && RSS_MAX_KIB=$r
    LA1_SUM=$(calc %.2f "$LA1_SUM + $(cut -d' ' -f1 /proc/loadavg)")
    LA1_N=$((LA1_N + 1))
    ledger_track
    sleep 0.2
done
wait "$GEN_PID" || die "the generator failed"
C_GEN=$(agent_ticks)
T_GEN=$(now_ns)
J_GEN=$(cpu_jiffies)
LA_LOAD1=$(loadavg)
read -r GEN_LINES GEN_BYTES GEN_SECS GEN_LATE <"$SCRATCH/gen.out"
log "generator: $GEN_LINES lines, $GEN_BYTES bytes in ${GEN_SECS}s ($GEN_LATE slices more than 10 ms late)"

# Wait until the server stores every line.
COUNT_TIMEOUT=${COUNT_TIMEOUT:-600}
deadline=$(($(date +%s) + COUNT_TIMEOUT))
while :; do
    n=$(count_logs) || die "count query failed"
    [ "$n" = "$GEN_LINES" ] && break
    [ "$n" -gt "$GEN_LINES" ] && die "count(*) = $n exceeds the $GEN_LINES lines written"
    [ "$(date +%s)" -lt "$deadline" ] || die "count(*) = $n, not $GEN_LINES, ${COUNT_TIMEOUT}s after the generator ended"
    r=$(agent_status_kib VmRSS)
    [ "$r" -gt "$RSS_MAX_KIB" ] && RSS_MAX_KIB=$r
    ledger_track
    sleep 0.5
done
C_DONE=$(agent_ticks)
T_DONE=$(now_ns)
LOAD_HWM_KIB=$(agent_status_kib VmHWM)
LOAD_THREADS=$(agent_threads)
STORED=$n
ledger_track
LEDGER2=$(ledger_bytes)

GEN_WALL=$(calc %.3f "($T_GEN - $T0) / 1e9")
DRAIN_S=$(calc %.1f "($T_DONE - $T_GEN) / 1e9")
LOAD_CPU_S=$(calc %.2f "($C_DONE - $C0) / $CLK_TCK")
LOAD_CPU_PCT=$(calc %.2f "100 * $LOAD_CPU_S / $GEN_SECS")
WIN_CPU_S=$(calc %.2f "($C_GEN - $C0) / $CLK_TCK")
WIN_CPU_PCT=$(calc %.2f "100 * $WIN_CPU_S / $GEN_WALL")
EPS=$(calc %.0f "$GEN_LINES / $GEN_SECS")
LOAD_BUSY=$(busy_pct "$J0" "$J_GEN")
LA1_MEAN=$(calc %.2f "($LA1_N > 0) ? $LA1_SUM / $LA1_N : 0")
LEDGER_LOAD=$((LEDGER2 - LEDGER1))
LEDGER_BPS=$(calc %.0f "$LEDGER_LOAD / $GEN_SECS")
RATIO=$(calc %.2f "$LOAD_CPU_PCT / $OTEL_CPU_PCT")
SEVERITIES=$("$BIN" query --workspace "$WS_ID" \
    "SELECT severity, count(*) AS n FROM logs GROUP BY severity ORDER BY n DESC" --output json |
    jq -r 'map("\(.severity) \(.n)") | join(", ")') || SEVERITIES="?"

# --- stop the agent, verify the ledger -------------------------------------

log "stopping the agent (SIGTERM)"
kill -TERM "$AGENT_PID"
rc=0
wait "$AGENT_PID" || rc=$?
AGENT_PID=""
[ "$rc" -eq 0 ] || die "the agent exited with status $rc"
AGENT_SUMMARY=$(jq -c . "$SCRATCH/agent.json")
VERIFY=$("$BIN" telemetry verify-ledger --state-dir "$AGENT_STATE" --output json) ||
    die "custos telemetry verify-ledger failed"
VERIFY=$(jq -c 'if type == "array" then .[0] else . end' <<<"$VERIFY")
[ "$(jq -r .ok <<<"$VERIFY")" = true ] || die "verify-ledger: $VERIFY"
[ "$LEDGER2" -gt "$LEDGER1" ] || die "the ledger did not grow during the load phase ($LEDGER1 -> $LEDGER2 bytes)"

# --- report --------------------------------------------------------------------

printf '\n== custos agent footprint benchmark ==\n'
printf '%-34s %s (release example, runtime %s)\n' "agent" "$AGENT_BIN" "$RUNTIME_DESC"
printf '%-34s %s\n' "malloc environment" "$(env | grep -E '^(MALLOC_|GLIBC_TUNABLES)' | tr '\n' ' ' || true)"
printf '%-34s %s (%s)\n' "server / CLI" "$BIN" "$("$BIN" --version 2>/dev/null || echo '?')"
printf '%-34s %s cores, %s\n' "host" "$(nproc)" "$(uname -r)"
printf '%-34s file source, level full, default batching, ledger on, policy file absent\n' "config"
printf '\n-- idle (%s s, after %s s settling) --\n' "$IDLE_WALL" "$SETTLE_SECS"
printf '%-34s %s %% of one core (%s CPU-s)\n' "CPU" "$IDLE_CPU_PCT" "$IDLE_CPU_S"
printf '%-34s %s MiB (VmHWM %s MiB), %s threads\n' "RSS" "$(mib "$IDLE_RSS_KIB")" "$(mib "$IDLE_HWM_KIB")" "$IDLE_THREADS"
printf '%-34s %s bytes\n' "ledger growth" "$((LEDGER1 - LEDGER0))"
printf '%-34s %s -> %s; all CPUs %s %% busy\n' "machine load average" "$LA_IDLE0" "$LA_IDLE1" "$IDLE_BUSY"
printf '\n-- load (%s lines/s asked, %s s) --\n' "$RATE" "$LOAD_SECS"
printf '%-34s %s lines, %s bytes (%.0f B/line) in %s s: %s events/s (%s slices late)\n' "generated" \
    "$GEN_LINES" "$GEN_BYTES" "$(calc %.1f "$GEN_BYTES / $GEN_LINES")" "$GEN_SECS" "$EPS" "$GEN_LATE"
printf '%-34s %s\n' "severities stored" "$SEVERITIES"
printf '%-34s %s of %s lines (all stored %s s after the generator ended)\n' "stored (count(*) FROM logs)" "$STORED" "$GEN_LINES" "$DRAIN_S"
printf '%-34s %s %% of one core (%s CPU-s, start of load -> last line stored, per second of input)\n' "CPU" "$LOAD_CPU_PCT" "$LOAD_CPU_S"
printf '%-34s %s %% of one core (%s CPU-s over %s s)\n' "CPU inside the window only" "$WIN_CPU_PCT" "$WIN_CPU_S" "$GEN_WALL"
printf '%-34s %s MiB (VmHWM); VmRSS sampled max %s MiB; %s threads\n' "RSS max" "$(mib "$LOAD_HWM_KIB")" "$(mib "$RSS_MAX_KIB")" "$LOAD_THREADS"
printf '%-34s %s bytes, %s bytes/s (%.2f MiB/s)\n' "ledger written" "$LEDGER_LOAD" "$LEDGER_BPS" "$(calc %.4f "$LEDGER_BPS / 1048576")"
printf '%-34s %s -> %s (mean 1-min %s); all CPUs %s %% busy\n' "machine load average" "$LA_LOAD0" "$LA_LOAD1" "$LA1_MEAN" "$LOAD_BUSY"
printf '%-34s %s\n' "agent summary" "$AGENT_SUMMARY"
printf '%-34s %s\n' "verify-ledger" "$VERIFY"
printf '\n-- against the aim and the OpenTelemetry Collector --\n'
printf 'aim: under 5%% of one core at 10,000 events/s and under 40 MB (38.1 MiB) resident: CPU %s, RSS %s\n' \
    "$(calc %s "($LOAD_CPU_PCT < 5) ? \"met\" : \"missed\"")" \
    "$(calc %s "($LOAD_HWM_KIB * 1024 < 40000000) ? \"met\" : \"missed\"")"
printf 'custos uses %s%% vs OTel'"'"'s published %s%%: ratio %s\n' "$LOAD_CPU_PCT" "$OTEL_CPU_PCT" "$RATIO"
printf '(the OpenTelemetry Collector is not installable here; %s%% is from its own published load test, not measured in this run)\n' "$OTEL_CPU_PCT"

BENCH_OK=1
stop_server
echo
printf 'RESULT %s\n' "$(jq -cn --arg bench agent --arg runtime "$RUNTIME_DESC" \
    --argjson rate "$RATE" --argjson idle_secs "$IDLE_WALL" --argjson load_secs "$GEN_SECS" \
    --argjson idle_cpu_pct "$IDLE_CPU_PCT" --argjson idle_rss_kib "$IDLE_RSS_KIB" --argjson idle_hwm_kib "$IDLE_HWM_KIB" \
    --argjson load_cpu_pct "$LOAD_CPU_PCT" --argjson load_window_cpu_pct "$WIN_CPU_PCT" \
    --argjson load_hwm_kib "$LOAD_HWM_KIB" --argjson load_rss_sampled_max_kib "$RSS_MAX_KIB" \
    --argjson lines "$GEN_LINES" --argjson bytes "$GEN_BYTES" --argjson events_per_s "$EPS" \
    --argjson stored "$STORED" --argjson ledger_bytes "$LEDGER_LOAD" --argjson ledger_bytes_per_s "$LEDGER_BPS" \
    --argjson otel_cpu_pct "$OTEL_CPU_PCT" --argjson ratio_vs_otel "$RATIO" \
    --arg loadavg_idle "$LA_IDLE1" --arg loadavg_load "$LA_LOAD1" --argjson loadavg1_mean_load "$LA1_MEAN" \
    --argjson cpus_busy_pct_idle "$IDLE_BUSY" --argjson cpus_busy_pct_load "$LOAD_BUSY" \
    --argjson agent "$AGENT_SUMMARY" --argjson verify_ledger "$VERIFY" '$ARGS.named')"
