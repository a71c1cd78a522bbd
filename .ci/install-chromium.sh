#!/usr/bin/env bash
# Installs what tests/test_docs_site.py drives through selenium: Debian's chromium and
# chromium-driver (a headless browser and its WebDriver). Exits non-zero with the reason on
# stderr when it cannot (not root, no apt-get).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "installing chromium and chromium-driver needs root" >&2; exit 3
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get on this machine to install chromium and chromium-driver" >&2; exit 3
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
