#!/bin/sh
# Set up this machine for the test suite and run all of it.
#
# On a fresh Debian machine (as root) it installs what the tests drive for
# real: tshark (conformance and cross-checks), tcpdump, nginx, vsftpd, lftp,
# curl and wrk (sample traffic), Chromium and a CJK font (the HTML report is
# checked in a headless browser), Prometheus (scrapes `live --metrics` in a
# test), tmux (the live terminal view is read from a tmux pane), and gcc
# with the Python headers for the compiled fast path (analyzer/_fast).
# Python dependencies go into .venv; the fast path is also built in place,
# since the tests import the package from this tree (tests/conftest.py runs
# event tests over both loops).
# Exit status: pytest's (0 only when the tests pass).
set -eu
cd "$(dirname "$0")/.."

need=""
for tool in tshark capinfos tcpdump nginx vsftpd lftp curl wrk chromium prometheus tmux gcc; do
    command -v "$tool" >/dev/null 2>&1 || need="yes"
done
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need="yes"
python3 -c "import ensurepip, venv" 2>/dev/null || need="yes"
command -v gcc >/dev/null 2>&1 || need="yes"
python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    || need="yes"
if [ -n "$need" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: some test tools are missing and this is not root on Debian; the tests needing them will skip" >&2
    else
        echo "setup: installing test tools with apt-get (tshark, tcpdump, nginx, vsftpd, chromium, ...)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            tshark tcpdump nginx-light vsftpd lftp curl wrk chromium fonts-wqy-microhei prometheus tmux \
            python3-venv gcc python3-dev >/dev/null
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check '.[dev,cluster]'
# The compiled fast path beside the sources the tests import; without a
# compiler a warning, not a failure: its tests then skip.  setup.py reads
# pyproject.toml, whose licence field needs setuptools 77.
.venv/bin/python -m pip install -q --disable-pip-version-check 'setuptools>=77'
.venv/bin/python setup.py -q build_ext --inplace \
    || echo "setup: the compiled fast path was not built; its tests will skip" >&2
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
