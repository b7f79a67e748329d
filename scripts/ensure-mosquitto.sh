#!/usr/bin/env bash
# Make sure a `mosquitto` broker binary exists for the tests: install Debian's
# package when we are root (as in CI), otherwise say what to install and stop.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto not found: installing Debian's mosquitto package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
    # The package starts a system broker on port 1883; the tests start their own.
    (systemctl stop mosquitto || service mosquitto stop) >/dev/null 2>&1 || true
    exit 0
fi
echo "mosquitto not found: install Debian's 'mosquitto' package (sudo apt-get install mosquitto)" >&2
exit 1
