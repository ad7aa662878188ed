#!/usr/bin/env bash
# The test command: installs what the tests need (only if missing) and runs
# every test of the workspace. `.ci/run` calls this same script.
#
# The tests need the Rust toolchain (rustup's cargo), the public corpus in
# ../shared/corpus, and SoftHSM2 (the PKCS#11 key provider is tested against
# it; its tests fail, saying so, without it). Later issues add real servers
# (PostgreSQL, S3, NATS); their installs go here, guarded like these.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi
if [ ! -d ../shared/corpus ]; then
    echo "error: ../shared/corpus not found; the tests read real logs from it" >&2
    exit 1
fi

# apt_install PKG... : install Debian packages only if missing.
apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
}

# SoftHSM2: the PKCS#11 module and softhsm2-util (crates/custos-store/tests/pkcs11.rs).
apt_install softhsm2

if cargo clippy --version >/dev/null 2>&1; then
    echo "==> cargo clippy --workspace --all-targets (warnings are errors)"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi

echo "==> cargo test --workspace ($(nproc) cores)"
start=$(date +%s)
cargo test --workspace --locked "$@"
echo "==> all tests passed in $(( $(date +%s) - start )) s"
