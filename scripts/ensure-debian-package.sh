#!/usr/bin/env bash
# Make sure a command the tests need exists: install its Debian package when we are root
# (as in CI), otherwise say what to install. Usage:
#   ensure-debian-package.sh COMMAND PACKAGE [--optional]
# Exit 0 when the command is there or was installed. When it cannot be installed: exit 1,
# or, with --optional, say that the tests needing it will skip and exit 0.
set -euo pipefail
command_name=$1
package=$2
optional=${3:-}
if command -v "$command_name" >/dev/null 2>&1 || [ -x "/usr/sbin/$command_name" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "$command_name not found: installing Debian's $package package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    exit 0
fi
how="install Debian's '$package' package (sudo apt-get install $package)"
if [ "$optional" = "--optional" ]; then
    echo "$command_name not found: the tests that need it will skip; $how" >&2
    exit 0
fi
echo "$command_name not found: $how" >&2
exit 1
