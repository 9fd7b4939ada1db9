#!/usr/bin/env bash
# Screenshot a TensorBoard view (HParams by default) of a log directory with headless Chromium
# (Debian's `chromium`). usage: scripts/screenshot_tensorboard.sh LOGDIR OUT.png [PORT] [VIEW]
# VIEW is the dashboard's name in TensorBoard's URL: hparams, custom_scalars, scalars, images, ...
set -euo pipefail
sweep_dir=${1:?usage: $0 LOGDIR OUT.png [PORT] [VIEW]}
out=${2:?usage: $0 LOGDIR OUT.png [PORT] [VIEW]}
port=${3:-6123}
view=${4:-hparams}
root=$(cd "$(dirname "$0")/.." && pwd)
tensorboard=${TENSORBOARD:-$root/.venv/bin/tensorboard}
[ -x "$tensorboard" ] || { echo "error: $tensorboard not found (set TENSORBOARD)" >&2; exit 1; }
profile=$(mktemp -d)
"$tensorboard" --logdir "$sweep_dir" --host 127.0.0.1 --port "$port" >"$profile/tensorboard.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$profile"' EXIT
up=0
for _ in $(seq 60); do
  if curl -sf "http://127.0.0.1:$port/data/runs" >/dev/null; then up=1; break; fi
  kill -0 "$server" 2>/dev/null || break
  sleep 1
done
if [ "$up" != 1 ]; then
  echo "error: TensorBoard did not come up on port $port; its log:" >&2
  cat "$profile/tensorboard.log" >&2
  exit 1
fi
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1800,800 --virtual-time-budget=15000 \
  --screenshot="$out" "http://127.0.0.1:$port/#$view"
[ -s "$out" ] || { echo "error: chromium wrote no screenshot to $out" >&2; exit 1; }
echo "wrote $out"
