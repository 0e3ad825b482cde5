#!/usr/bin/env bash
# The README's test command: sets up what the tests need on a fresh machine
# (system tools for the mount/NAT tests, a Python venv with ProxyStore for
# the compatibility test), then runs every test of the workspace.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    need=()
    command -v unshare >/dev/null 2>&1 || need+=(util-linux)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import proxystore' 2>/dev/null; then
    echo "== creating .venv with Python ProxyStore (compatibility test)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check 'proxystore>=1,<2'
fi

# Run everything, then end with one line that totals every test binary
# (cargo's own last line is a doc-test run that may hold no tests).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
