#!/bin/sh
# Set up this machine for the test suite and run all of it.
#
# On a fresh Debian machine (as root) it installs what the tests drive for
# real: tshark (conformance and cross-checks), tcpdump, nginx, vsftpd, lftp,
# curl and wrk (sample traffic), Chromium and a CJK font (the HTML report is
# checked in a headless browser).  Python dependencies go into .venv.
# Exit status: pytest's (0 only when the tests pass).
set -eu
cd "$(dirname "$0")/.."

need=""
for tool in tshark capinfos tcpdump nginx vsftpd lftp curl wrk chromium tmux; do
    command -v "$tool" >/dev/null 2>&1 || need="yes"
done
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need="yes"
python3 -c "import ensurepip, venv" 2>/dev/null || need="yes"
if [ -n "$need" ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: some test tools are missing and this is not root on Debian; the tests needing them will skip" >&2
    else
        echo "setup: installing test tools with apt-get (tshark, tcpdump, nginx, vsftpd, chromium, ...)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            tshark tcpdump nginx-light vsftpd lftp curl wrk chromium fonts-wqy-microhei tmux \
            python3-venv >/dev/null
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check '.[dev]'
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
