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

exec cargo test --workspace "$@"
