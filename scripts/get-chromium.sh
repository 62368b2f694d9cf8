#!/usr/bin/env bash
# Debian's Chromium, for the test that opens the HTML run report in a real browser.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: the browser test will say why it cannot run"; exit 0; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "Installing Debian's chromium for the report test ..."
$sudo apt-get update -qq >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null 2>&1 ||
  echo "could not install chromium: the browser test will fail with the reason"
exit 0
