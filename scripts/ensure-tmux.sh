#!/usr/bin/env bash
# Make sure `tmux` exists for the demo's screen tests (tests/integration/test_demo_terminal.py
# runs the demo in a real terminal of a given size): install Debian's package when we are
# root (as in CI); otherwise say what to install, and those tests skip saying why.
set -euo pipefail
exec bash "$(dirname "$0")/ensure-debian-package.sh" tmux tmux --optional
