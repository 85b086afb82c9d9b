#!/usr/bin/env bash
# The health page in headless Chromium: serve the demo's lake with
# `ferry demo --serve`, load / in the browser, and check that every
# integration of the starter project and its figures are on the rendered
# page, that the demo's schedules fired, and that /metrics answers. Leaves a
# screenshot at target/health-page.png.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
chromium --version

PORT=18188
LOG=target/health-serve.log
rm -rf lake
./target/debug/ferry demo --serve --port "$PORT" >"$LOG" 2>&1 &
SERVE=$!
trap 'kill -TERM $SERVE 2>/dev/null || true' EXIT

# The demo builds, then serves; the refresh schedule fires at once and the
# chained build after it.
for _ in $(seq 1 240); do
  if grep -q "schedule model_and_sync: success" "$LOG"; then break; fi
  if ! kill -0 $SERVE 2>/dev/null; then cat "$LOG"; echo "ferry demo --serve exited"; exit 1; fi
  sleep 0.5
done
grep -q "schedule model_and_sync: success" "$LOG" || { tail -50 "$LOG"; echo "the chained schedule did not run"; exit 1; }

URL="http://127.0.0.1:$PORT/"
DOM=target/health-page.dom.html
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --dump-dom "$URL" >"$DOM" 2>/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --window-size=1400,1700 --screenshot=target/health-page.png "$URL" >/dev/null 2>&1

fail() { echo "health page: $1"; exit 1; }
for i in hubspot.contacts hubspot.companies hubspot.deals marketing.campaigns \
         marketing.touches marketing.leads sequencer.email_events contact_scores; do
  grep -q "data-integration=\"$i\"" "$DOM" || fail "integration $i is missing"
done
grep -q 'data-integration="contact_scores" data-kind="sync" data-status="active"' "$DOM" \
  || fail "the sync is not active"
extracted=$(grep -o 'data-figure="extracted">[0-9]*' "$DOM" | grep -o '[0-9]*$')
synced=$(grep -o 'data-figure="synced">[0-9]*' "$DOM" | grep -o '[0-9]*$')
[ "${extracted:-0}" -gt 20000 ] || fail "records extracted today: ${extracted:-none}"
[ "${synced:-0}" -gt 2000 ] || fail "records synced today: ${synced:-none}"
grep -q 'data-schedule="refresh"' "$DOM" || fail "the refresh schedule is missing"
[ "$(grep -c 'data-run=' "$DOM")" -ge 3 ] || fail "the demo build and the two scheduled runs are not all listed"
grep -q 'ferry_api_calls_total{vendor="hubspot"}' <(curl -fsS "${URL}metrics") || fail "/metrics has no HubSpot calls"

kill -TERM $SERVE
wait $SERVE || fail "ferry serve did not stop cleanly on SIGTERM"
trap - EXIT
echo "health page OK: $extracted extracted, $synced synced; screenshot at target/health-page.png"
