#!/usr/bin/env bash
# Make sure a `mosquitto` broker binary exists for the tests: install Debian's
# package when we are root (as in CI), otherwise say what to install and stop.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
bash "$(dirname "$0")/ensure-debian-package.sh" mosquitto mosquitto
# Installed just now: the package starts a system broker on port 1883; the tests start their own.
(systemctl stop mosquitto || service mosquitto stop) >/dev/null 2>&1 || true
