#!/usr/bin/env bash
# Render a validation report in headless Chromium and save a PNG screenshot.
#
# Usage: scripts/screenshot_report.sh [REPORT_HTML] [OUT_PNG]
#   REPORT_HTML  default .memos-etl/report.html (written by `memos-etl validate CONFIG`)
#   OUT_PNG      default report.png
# Needs Chromium (Debian: apt-get install -y chromium). The browser runs with a fresh
# profile, no network helpers and no sandbox (root in a container), so the screenshot
# shows exactly what the self-contained file renders offline.
set -euo pipefail

html="${1:-.memos-etl/report.html}"
out="${2:-report.png}"
browser="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [[ -z "$browser" ]]; then
  echo "error: chromium not found; install it (apt-get install -y chromium) or set CHROMIUM" >&2
  exit 2
fi
if [[ ! -f "$html" ]]; then
  echo "error: $html not found; run memos-etl validate CONFIG first" >&2
  exit 2
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$(realpath -m "$out")" --window-size=1280,2400 \
  "file://$(realpath "$html")" 2>"$profile/chromium.log" || {
    echo "error: chromium failed; see its log:" >&2
    cat "$profile/chromium.log" >&2
    exit 1
  }
echo "$out"
