#!/usr/bin/env bash
# Installs the peers of the redaction benchmark (bench/redact/bench.sh and
# bench/redact/quality.py). Idempotent: does nothing that is already done.
#
#   - a Python virtual environment at $CUSTOS_BENCH_CACHE/venv
#     (default ~/.cache/custos-bench/venv) with presidio-analyzer and
#     presidio-anonymizer from PyPI. No spaCy model is downloaded:
#     presidio_run.py runs Presidio on a blank spaCy pipeline with pattern
#     recognizers only.
#   - Debian's `sosreport` (the `sos` command), with apt-get, only if `sos`
#     is not on PATH (sudo is used only when not root).
#
# Prints, last, the path of the venv's python (bench.sh reads it).
set -euo pipefail

CACHE=${CUSTOS_BENCH_CACHE:-$HOME/.cache/custos-bench}
VENV=$CACHE/venv
# Pinned so that the figures are comparable from run to run.
PRESIDIO_VERSION=${PRESIDIO_VERSION:-2.2.366}

log() { printf '[setup] %s\n' "$*" >&2; }

mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" - "$PRESIDIO_VERSION" <<'PY' >/dev/null 2>&1; then
import sys
from importlib.metadata import version
want = sys.argv[1]
assert version("presidio-analyzer") == want, version("presidio-analyzer")
assert version("presidio-anonymizer") == want, version("presidio-anonymizer")
import presidio_analyzer, presidio_anonymizer, spacy  # noqa: F401
PY
    log "installing presidio-analyzer and presidio-anonymizer $PRESIDIO_VERSION from PyPI"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "presidio-analyzer==$PRESIDIO_VERSION" "presidio-anonymizer==$PRESIDIO_VERSION" >&2
fi

if ! command -v sos >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    log "installing Debian sosreport (sos clean)"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq sosreport >&2
fi
command -v sos >/dev/null 2>&1 || { log "error: sos still missing"; exit 1; }

log "presidio $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("presidio-analyzer"))'), $(sos --version 2>/dev/null | head -n 1 || dpkg-query -W -f='sosreport ${Version}' sosreport)"
echo "$VENV/bin/python"
