#!/bin/sh
# Install the analyzer into .venv and analyse the bundled sample captures.
# Outputs go to ./analyzer-report/ (events.csv, hosts.csv, codes.csv,
# report.html, summary.json ...); the last line says where.  gcc and the
# Python headers build the compiled fast path (analyzer/_fast); without them
# the install still works and the analyzer says it runs the slower loop.
set -eu
cd "$(dirname "$0")/.."
packages=""
python3 -c "import ensurepip, venv" 2>/dev/null || packages="python3-venv"
if ! command -v gcc >/dev/null 2>&1 || ! python3 -c "import sysconfig, os, sys; \
        sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then
    packages="$packages gcc python3-dev"
fi
if [ -n "$packages" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
    elif [ "${packages#python3-venv}" != "$packages" ]; then
        echo "quickstart: python3 cannot create virtual environments; install python3-venv" >&2
        exit 1
    else
        echo "quickstart: no C compiler: installing without the compiled fast path" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check .
.venv/bin/analyzer analyze samples/captures -o analyzer-report "$@"
