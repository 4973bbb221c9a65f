#!/bin/sh
# Install the analyzer into .venv and analyse the bundled sample captures.
# Outputs go to ./analyzer-report/ (events.csv, hosts.csv, codes.csv,
# report.html, summary.json ...); the last line says where.
set -eu
cd "$(dirname "$0")/.."
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "quickstart: python3 cannot create virtual environments; install python3-venv" >&2
        exit 1
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check .
.venv/bin/analyzer analyze samples/captures -o analyzer-report "$@"
