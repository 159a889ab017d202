#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (executable_path): install the
# package when it is missing and we can (root with apt-get); otherwise say what to install.
# The tests themselves fail with the same hint if it is still missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the browser tests (apt-get install chromium) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "warning: chromium is missing and cannot be installed here; the browser tests will" \
        "fail until it is (Debian: sudo apt-get install chromium)" >&2
fi
