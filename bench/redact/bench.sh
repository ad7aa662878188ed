#!/usr/bin/env bash
# Redaction speed benchmark: `custos redact` (default policy) against
# Presidio (pattern recognizers only) and `sos clean`, on real logs.
#
# Usage: bench/redact/bench.sh [SIZE_MB] [--bin PATH] [--no-custos]
#   SIZE_MB      input size, at least this many MB (10^6 bytes; default 200)
#   --bin PATH   custos binary (default: cargo build --release -p custos,
#                then target/release/custos)
#   --no-custos  measure the peers only (to test the script without custos)
#
# Input: the nine loghub *_2k.log files from ../shared/corpus/loghub (18,000
# lines, 2.8 MB), CR stripped, their lines interleaved round-robin (line 1 of
# each log, then line 2 of each, ...) so that any prefix is a fair mix of all
# nine systems; that block repeated until SIZE_MB is reached. Built once
# into $CUSTOS_BENCH_CACHE/corpus (default ~/.cache/custos-bench) and reused.
#
# Measured:
#   custos     `custos redact < input > output` over the whole input,
#              CUSTOS_RUNS times (default 3), the fastest run reported (all
#              runs' CPU-s are printed); CPU = user + sys of the process
#              (/usr/bin/time), start-up included. MB/s per core = input
#              bytes / CPU seconds. The user time alone is printed too.
#   Presidio   presidio_run.py --throughput (analyze + anonymize per line,
#              8 pattern recognizers, no NLP model) over the first
#              PRESIDIO_LINES lines (default 18,000 = one full block of the
#              nine logs, about a minute): at ~300-700 lines/s the whole input
#              would take hours. CPU = the loop's own CPU seconds (engine
#              start-up excluded, which favours Presidio).
#   sos clean  `sos clean DIR --batch --domains ... --keywords ...` over the
#              first SOS_LINES lines (default 0 = the whole input; sos does
#              about 3 MB/s, so 200 MB take about 70-90 s). CPU = user + sys
#              of sos (/usr/bin/time), start-up and its copy of the output
#              included. sos moves its input directory into its --tmp-dir and
#              writes /etc/sos/cleaner/default_mapping: this script backs that
#              file up first and restores (or removes) it afterwards.
# Prints a report and, last, one line `RESULT {json}`.
#
# Environment: PRESIDIO_LINES, SOS_LINES, CUSTOS_RUNS (see above), SOS_DOMAINS,
# SOS_KEYWORDS (sos clean's --domains/--keywords), CUSTOS_BENCH_CACHE, BENCH_DIR
# (scratch parent, default /tmp), KEEP=1 (keep the scratch dir).
# Runs bench/redact/setup.sh first (installs Presidio in a venv and sosreport).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/../lib.sh"

SIZE_MB=""
NO_CUSTOS=0
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
    --no-custos)
        NO_CUSTOS=1
        shift
        ;;
    -h | --help)
        awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
        exit 0
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        [ -z "$SIZE_MB" ] || die "unexpected argument $1"
        SIZE_MB=$1
        shift
        ;;
    esac
done
SIZE_MB=${SIZE_MB:-200}
[[ $SIZE_MB =~ ^[1-9][0-9]*$ ]] || die "size must be a positive integer (MB), got '$SIZE_MB'"
PRESIDIO_LINES=${PRESIDIO_LINES:-18000}
CUSTOS_RUNS=${CUSTOS_RUNS:-3}
[[ $CUSTOS_RUNS =~ ^[1-9][0-9]*$ ]] || die "CUSTOS_RUNS must be a positive integer, got '$CUSTOS_RUNS'"
SOS_LINES=${SOS_LINES:-0}
# "Sensible" sos clean options: the registered domains of the host names that
# occur in the logs (sos only replaces host names under --domains; it matches
# them label by label, so 'uninet-ide.com' covers x.uninet-ide.com.mx), and
# the host names of the log sources as keywords.
SOS_DOMAINS=${SOS_DOMAINS:-uninet-ide.com,amazonaws.com,omantel.net,vivozap.com,marryaldkfaczcz.com,poneytelecom.eu}
SOS_KEYWORDS=${SOS_KEYWORDS:-LabSZ,tbird-admin1,tbird-sm1}
T_START=$(now_ns)

command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
[ -x /usr/bin/time ] || die "/usr/bin/time is needed (apt-get install time)"

log "setup: bench/redact/setup.sh"
PY=$("$HERE/setup.sh" | tail -n 1)
[ -x "$PY" ] || die "setup.sh did not give a python: $PY"

if [ "$NO_CUSTOS" = 0 ] && [ -z "$BIN" ]; then
    log "building: cargo build --release -p custos"
    (cd "$BENCH_REPO" && cargo build --release -p custos) >&2
    target=${CARGO_TARGET_DIR:-target}
    case $target in /*) ;; *) target=$BENCH_REPO/$target ;; esac
    BIN=$target/release/custos
fi
if [ "$NO_CUSTOS" = 0 ]; then
    [ -x "$BIN" ] || die "custos binary not found or not executable: $BIN"
    "$BIN" redact --help >/dev/null 2>&1 || die "$BIN has no working 'redact' command"
fi

# ---- corpus ---------------------------------------------------------------
CACHE=${CUSTOS_BENCH_CACHE:-$HOME/.cache/custos-bench}
CORPUS=$BENCH_REPO/../shared/corpus/loghub
mkdir -p "$CACHE/corpus"
BASE=$CACHE/corpus/loghub-interleaved.log
INPUT=$CACHE/corpus/loghub-interleaved-${SIZE_MB}MB.log
if [ ! -s "$BASE" ] || [ ! -s "$BASE.ok" ]; then
    log "corpus: interleaving the nine loghub logs into $BASE"
    python3 - "$CORPUS" "$BASE" <<'PY'
import glob, os, sys
corpus, out = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(os.path.join(corpus, "*", "*_2k.log")))
if len(files) != 9:
    sys.exit(f"expected 9 loghub logs under {corpus}, found {len(files)}")
logs = []
for f in files:
    with open(f, "rb") as fh:
        logs.append([l.rstrip(b"\r\n").replace(b"\r", b"") for l in fh.read().split(b"\n") if l.strip(b"\r")])
with open(out + ".tmp", "wb") as o:
    for i in range(max(map(len, logs))):
        for lines in logs:
            if i < len(lines):
                o.write(lines[i] + b"\n")
os.replace(out + ".tmp", out)
PY
    echo ok >"$BASE.ok"
fi
BASE_BYTES=$(stat -c %s "$BASE")
BASE_LINES=$(wc -l <"$BASE")
COPIES=$(((SIZE_MB * 1000000 + BASE_BYTES - 1) / BASE_BYTES))
if [ ! -s "$INPUT" ] || [ "$(stat -c %s "$INPUT")" -ne $((COPIES * BASE_BYTES)) ]; then
    log "corpus: $COPIES copies of $BASE -> $INPUT"
    for ((i = 0; i < COPIES; i++)); do cat "$BASE"; done >"$INPUT.tmp"
    mv "$INPUT.tmp" "$INPUT"
fi
IN_BYTES=$(stat -c %s "$INPUT")
IN_LINES=$((COPIES * BASE_LINES))
log "input: $IN_BYTES bytes, $IN_LINES lines ($COPIES x $BASE_LINES)"

bench_scratch redact
# sos clean writes /etc/sos/cleaner/default_mapping; keep the operator's.
SOS_MAP=/etc/sos/cleaner/default_mapping
SOS_MAP_SAVED=""
sos_restore_map() {
    if [ -n "$SOS_MAP_SAVED" ] && [ -f "$SOS_MAP_SAVED" ]; then
        cp -p -- "$SOS_MAP_SAVED" "$SOS_MAP" 2>/dev/null || true
    else
        rm -f -- "$SOS_MAP" 2>/dev/null || true
    fi
}
redact_cleanup() {
    local rc=$?
    [ -z "${SOS_RAN:-}" ] || sos_restore_map
    (exit "$rc")
    bench_cleanup
}
trap redact_cleanup EXIT

# mb BYTES SECONDS: MB/s (10^6 bytes); mib: MiB/s.
mb() { calc %.3f "($2 > 0) ? $1 / 1000000 / $2 : 0"; }
mib() { calc %.3f "($2 > 0) ? $1 / 1048576 / $2 : 0"; }

# ---- custos ---------------------------------------------------------------
C_JSON=null
if [ "$NO_CUSTOS" = 0 ]; then
    cat "$INPUT" >/dev/null # page cache, as for the peers
    # The fastest of CUSTOS_RUNS runs: on this kind of VM the kernel's copy
    # of the (cached) input varies between identical runs by more than
    # all of custos' own user time differences (sys 0.13-0.5 s for 200 MB).
    C_RUNS_CPU=()
    best=()
    best_cpu=""
    for run in $(seq "$CUSTOS_RUNS"); do
        log "custos: redact over the whole input (run $run of $CUSTOS_RUNS)"
        rc=0
        /usr/bin/time -f '%e %U %S %M' -o "$SCRATCH/custos.time.$run" \
            "$BIN" redact --state-dir "$SCRATCH/custos-state" <"$INPUT" >"$SCRATCH/custos.out" 2>"$SCRATCH/custos.err" || rc=$?
        [ "$rc" -eq 0 ] || {
            tail -n 5 "$SCRATCH/custos.err" >&2
            die "custos redact failed (status $rc)"
        }
        read -r -a t <"$SCRATCH/custos.time.$run"
        cpu=$(calc %.2f "${t[1]} + ${t[2]}")
        C_RUNS_CPU+=("$cpu")
        if [ -z "$best_cpu" ] || [ "$(calc %d "($cpu < $best_cpu) ? 1 : 0")" = 1 ]; then
            best_cpu=$cpu
            best=("${t[@]}")
        fi
    done
    t=("${best[@]}")
    C_WALL=${t[0]}
    C_CPU=$(calc %.2f "${t[1]} + ${t[2]}")
    C_RSS=$(calc %.1f "${t[3]} / 1024")
    C_OUT_LINES=$(wc -l <"$SCRATCH/custos.out")
    C_OUT_BYTES=$(stat -c %s "$SCRATCH/custos.out")
    [ "$C_OUT_LINES" -eq "$IN_LINES" ] || log "warning: custos wrote $C_OUT_LINES lines for $IN_LINES input lines"
    # Lines changed, on the first block (one copy of the nine logs).
    C_CHANGED=$(head -n "$BASE_LINES" "$SCRATCH/custos.out" |
        awk 'NR == FNR { a[FNR] = $0; next } a[FNR] != $0 { c++ } END { print c + 0 }' "$BASE" -)
    C_MBS=$(mb "$IN_BYTES" "$C_CPU")
    C_JSON=$(jq -cn --argjson wall_s "$C_WALL" --argjson cpu_s "$C_CPU" \
        --argjson user_s "${t[1]}" --argjson sys_s "${t[2]}" --argjson peak_rss_mib "$C_RSS" \
        --argjson bytes "$IN_BYTES" --argjson lines "$IN_LINES" \
        --argjson out_lines "$C_OUT_LINES" --argjson out_bytes "$C_OUT_BYTES" \
        --argjson changed_lines_first_block "$C_CHANGED" \
        --argjson mb_per_cpu_s "$C_MBS" --argjson mib_per_cpu_s "$(mib "$IN_BYTES" "$C_CPU")" \
        --argjson mb_per_s_wall "$(mb "$IN_BYTES" "$C_WALL")" \
        --argjson lines_per_cpu_s "$(calc %.0f "($C_CPU > 0) ? $IN_LINES / $C_CPU : 0")" \
        --argjson mb_per_user_s "$(mb "$IN_BYTES" "${t[1]}")" \
        --argjson runs_cpu_s "[$(IFS=,; echo "${C_RUNS_CPU[*]}")]" \
        '$ARGS.named')
    rm -f "$SCRATCH/custos.out"
fi

# ---- Presidio -------------------------------------------------------------
P_LINES=$PRESIDIO_LINES
[ "$P_LINES" -gt 0 ] && [ "$P_LINES" -le "$IN_LINES" ] || P_LINES=$IN_LINES
log "presidio: analyze + anonymize the first $P_LINES lines"
P_JSON=$("$PY" "$HERE/presidio_run.py" --throughput "$INPUT" --max-lines "$P_LINES" --json)
P_CPU=$(jq -r .cpu_s <<<"$P_JSON")
P_BYTES=$(jq -r .bytes <<<"$P_JSON")
P_MBS=$(mb "$P_BYTES" "$P_CPU")

# ---- sos clean ------------------------------------------------------------
S_LINES=$SOS_LINES
[ "$S_LINES" -gt 0 ] && [ "$S_LINES" -le "$IN_LINES" ] || S_LINES=$IN_LINES
SOS_DIR=$SCRATCH/sos
# sos finds a file's name inside the archive by splitting its path on the
# archive's name: that name must occur nowhere else in the path.
SOS_ARC=sosreport-custosbench
mkdir -p "$SOS_DIR/$SOS_ARC/sos_logs" "$SOS_DIR/tmp"
if [ "$S_LINES" -eq "$IN_LINES" ]; then
    cp -- "$INPUT" "$SOS_DIR/$SOS_ARC/loghub.log"
else
    head -n "$S_LINES" "$INPUT" >"$SOS_DIR/$SOS_ARC/loghub.log"
fi
S_BYTES=$(stat -c %s "$SOS_DIR/$SOS_ARC/loghub.log")
if [ -f "$SOS_MAP" ]; then
    SOS_MAP_SAVED=$SCRATCH/default_mapping.saved
    cp -p -- "$SOS_MAP" "$SOS_MAP_SAVED"
    rm -f -- "$SOS_MAP" # a map from earlier runs would pre-seed this one
fi
SOS_RAN=1
log "sos clean: $S_LINES lines ($S_BYTES bytes)"
rc=0
(cd "$SOS_DIR" && /usr/bin/time -f '%e %U %S %M' -o "$SOS_DIR/sos.time" \
    sos clean "$SOS_DIR/$SOS_ARC" --batch --domains "$SOS_DOMAINS" --keywords "$SOS_KEYWORDS" \
    --tmp-dir "$SOS_DIR/tmp" >"$SOS_DIR/sos.out" 2>&1) || rc=$?
sos_restore_map
[ "$rc" -eq 0 ] || {
    tail -n 20 "$SOS_DIR/sos.out" >&2
    die "sos clean failed (status $rc)"
}
S_OUT=$(find "$SOS_DIR/tmp" -name loghub.log -type f | head -n 1)
[ -n "$S_OUT" ] || die "sos clean wrote no loghub.log under $SOS_DIR/tmp"
S_OUT_LINES=$(wc -l <"$S_OUT")
[ "$S_OUT_LINES" -eq "$S_LINES" ] || log "warning: sos clean wrote $S_OUT_LINES lines for $S_LINES"
S_MAPFILE=$(find "$SOS_DIR/tmp" -maxdepth 1 -name '*private_map' | head -n 1)
S_MAPPED=$(jq -c 'with_entries(.value |= length)' "$S_MAPFILE" 2>/dev/null || echo null)
[ "$(jq -r '.ip_map // 0' <<<"$S_MAPPED")" -gt 0 ] || die "sos clean replaced no IP address: it did not process the input (see $SOS_DIR/sos.out)"
read -r -a t <"$SOS_DIR/sos.time"
S_WALL=${t[0]}
S_CPU=$(calc %.2f "${t[1]} + ${t[2]}")
S_MBS=$(mb "$S_BYTES" "$S_CPU")
S_JSON=$(jq -cn --argjson lines "$S_LINES" --argjson bytes "$S_BYTES" --argjson wall_s "$S_WALL" \
    --argjson cpu_s "$S_CPU" --argjson peak_rss_mib "$(calc %.1f "${t[3]} / 1024")" \
    --argjson mb_per_cpu_s "$S_MBS" --argjson mib_per_cpu_s "$(mib "$S_BYTES" "$S_CPU")" \
    --argjson lines_per_cpu_s "$(calc %.0f "($S_CPU > 0) ? $S_LINES / $S_CPU : 0")" \
    --arg domains "$SOS_DOMAINS" --arg keywords "$SOS_KEYWORDS" --argjson mapped "$S_MAPPED" \
    --arg version "$(dpkg-query -W -f='${Version}' sosreport 2>/dev/null || echo unknown)" \
    '$ARGS.named')
rm -rf "$SOS_DIR"

# ---- report ---------------------------------------------------------------
T_TOTAL=$(calc %.0f "($(now_ns) - $T_START) / 1e9")
echo
echo "== Redaction speed: bytes / CPU-second (MB = 10^6 bytes), $(nproc) cores, $(date -u +%Y-%m-%d)"
printf '%-12s %s bytes (%.1f MB), %s lines: %s copies of the 9 interleaved loghub logs (%s lines, %s bytes)\n' \
    "input" "$IN_BYTES" "$(calc %.3f "$IN_BYTES / 1e6")" "$IN_LINES" "$COPIES" "$BASE_LINES" "$BASE_BYTES"
if [ "$NO_CUSTOS" = 0 ]; then
    printf '%-12s whole input, fastest of %s runs (CPU-s of each: %s): %s s wall, %s CPU-s (user %s + sys %s), peak RSS %s MiB, %s lines out\n' \
        "custos" "$CUSTOS_RUNS" "$(jq -r '.runs_cpu_s | map(tostring) | join(" ")' <<<"$C_JSON")" "$C_WALL" "$C_CPU" \
        "$(jq -r .user_s <<<"$C_JSON")" "$(jq -r .sys_s <<<"$C_JSON")" "$C_RSS" "$C_OUT_LINES"
    printf '%-12s => user time alone: %s MB/s per core\n' "" "$(jq -r .mb_per_user_s <<<"$C_JSON")"
    printf '%-12s => %s MB/s per core (%s MiB/s), %s lines/s per core; %s of the first %s lines changed\n' \
        "" "$C_MBS" "$(jq -r .mib_per_cpu_s <<<"$C_JSON")" "$(jq -r .lines_per_cpu_s <<<"$C_JSON")" "$C_CHANGED" "$BASE_LINES"
else
    printf '%-12s not measured (--no-custos)\n' "custos"
fi
printf '%-12s SAMPLE: first %s lines (%s bytes) of the same input, %s recognizers, no NLP model: %s s wall, %s CPU-s (+ %s s start-up)\n' \
    "presidio" "$P_LINES" "$P_BYTES" "$(jq -r '.recognizers | length' <<<"$P_JSON")" "$(jq -r .wall_s <<<"$P_JSON")" "$P_CPU" "$(jq -r .setup_wall_s <<<"$P_JSON")"
printf '%-12s => %s MB/s per core (%s MiB/s), %s lines/s per core; whole input would take ~%s h of CPU\n' \
    "" "$P_MBS" "$(jq -r .mib_per_cpu_s <<<"$P_JSON")" "$(jq -r .lines_per_cpu_s <<<"$P_JSON")" \
    "$(calc %.1f "($P_MBS > 0) ? $IN_BYTES / 1e6 / $P_MBS / 3600 : 0")"
if [ "$S_LINES" -eq "$IN_LINES" ]; then S_WHAT="whole input"; else S_WHAT="SAMPLE: first $S_LINES lines ($S_BYTES bytes)"; fi
printf '%-12s %s, --domains %s --keywords %s: %s s wall, %s CPU-s; replaced %s\n' \
    "sos clean" "$S_WHAT" "$SOS_DOMAINS" "$SOS_KEYWORDS" "$S_WALL" "$S_CPU" "$S_MAPPED"
printf '%-12s => %s MB/s per core (%s MiB/s), %s lines/s per core\n' \
    "" "$S_MBS" "$(jq -r .mib_per_cpu_s <<<"$S_JSON")" "$(jq -r .lines_per_cpu_s <<<"$S_JSON")"
R_P=null
R_S=null
if [ "$NO_CUSTOS" = 0 ]; then
    R_P=$(calc %.1f "($P_MBS > 0) ? $C_MBS / $P_MBS : 0")
    R_S=$(calc %.1f "($S_MBS > 0) ? $C_MBS / $S_MBS : 0")
    printf '%-12s custos / presidio = %sx   custos / sos clean = %sx   (aim: >= 100x each; custos aim 200 MB/s per core)\n' \
        "ratios" "$R_P" "$R_S"
fi
printf '%-12s %s s for this script\n' "took" "$T_TOTAL"
BENCH_OK=1
echo "RESULT $(jq -cn --argjson input_bytes "$IN_BYTES" --argjson input_lines "$IN_LINES" \
    --argjson copies "$COPIES" --argjson custos "$C_JSON" --argjson presidio "$P_JSON" \
    --argjson sos_clean "$S_JSON" --argjson ratio_custos_presidio "$R_P" \
    --argjson ratio_custos_sos "$R_S" --argjson script_s "$T_TOTAL" \
    --arg date "$(date -u +%FT%TZ)" --argjson cores "$(nproc)" '$ARGS.named')"
