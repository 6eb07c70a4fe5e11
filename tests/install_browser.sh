#!/usr/bin/env bash
# The browser of tests/test_html_report.py: Debian's chromium, installed with apt-get where it is missing
# (as root, or through sudo when it asks no password). Never fails the test run: where no browser can be
# installed, the test skips, except under CI, where it fails. Output goes to the log named as $1.
log="${1:-/tmp/vlsm-install-browser.log}"
for name in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$name" > /dev/null && exit 0
done
if ! command -v apt-get > /dev/null; then
    echo "note: no chromium and no apt-get: tests/test_html_report.py will skip (fail under CI)"
    exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
        sudo=(sudo -n)
    else
        echo "note: chromium is missing and installing it needs root: apt-get install chromium"
        exit 0
    fi
fi
echo "installing Debian's chromium for the HTML report's test (log: $log)"
if ! { "${sudo[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y \
        --no-install-recommends chromium fonts-dejavu-core; } > "$log" 2>&1; then
    echo "note: chromium could not be installed; the last lines of $log:"
    tail -n 5 "$log"
fi
exit 0
