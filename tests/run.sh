#!/usr/bin/env bash
# The README's test command: sets up what the tests need on a fresh machine
# (system tools for the mount/NAT tests, Chromium for the live view's test,
# systemd-analyze for the unit files, a Python venv with ProxyStore for
# the compatibility test), then runs every test of the workspace, then
# builds the Python wheel and runs its pytest suite against it.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    need=()
    command -v unshare >/dev/null 2>&1 || need+=(util-linux)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
    # The live view's test draws it in a real headless browser.
    [ -x /usr/bin/chromium ] || need+=(chromium)
    if [ ${#need[@]} -gt 0 ]; then
        echo "== installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

# ProxyStore with its `endpoints` extra: the compatibility tests also run
# `proxystore-endpoint list` against proxymeshd's PID file.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import proxystore.endpoint.cli' 2>/dev/null; then
    echo "== creating .venv with Python ProxyStore (compatibility tests)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check 'proxystore[endpoints]>=1,<2'
fi

# Run everything, then end with one line that totals every test binary
# (cargo's own last line is a doc-test run that may hold no tests).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# (The wheel's crate, proxymesh-python, only repackages the daemon's and the
# relay's binaries: its same-named debug binaries would collide with theirs.)
cargo test --workspace --exclude proxymesh-python --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# The Python package: build the wheel once, install it into a fresh venv
# (no Rust on its PATH) and run its pytest suite against the wheel's own
# daemons and relay.
echo "== python: building the wheel"
wheel=$(bash python/build-wheel)
echo "== python: installing $(basename "$wheel") into a fresh venv"
python3 -m venv --clear target/wheel-venv
target/wheel-venv/bin/pip install -q --disable-pip-version-check "$wheel[test]"
echo "== python: pytest"
(cd target && env -u PROXYMESH_API PATH="$PWD/wheel-venv/bin:/usr/bin:/bin" \
    wheel-venv/bin/python -m pytest -q -p no:cacheprovider ../python/tests) 2>&1 | tee -a "$log" || status=$?

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     /^[0-9]+ (passed|failed|skipped|error)/ {
         for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/ || $(i+1) ~ /^error/) f += $i; if ($(i+1) ~ /^skipped/) s += $i } }
     END { printf "all tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
