#!/usr/bin/env bash
# Screenshot TensorBoard's HParams view of a sweep with headless Chromium (Debian's `chromium`).
# usage: scripts/screenshot_tensorboard.sh SWEEP_DIR OUT.png [PORT]
set -euo pipefail
sweep_dir=${1:?usage: $0 SWEEP_DIR OUT.png [PORT]}
out=${2:?usage: $0 SWEEP_DIR OUT.png [PORT]}
port=${3:-6123}
python=${PYTHON:-python}
profile=$(mktemp -d)
"$python" -m tensorboard.main --logdir "$sweep_dir" --host 127.0.0.1 --port "$port" >"$profile/tensorboard.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$profile"' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/data/runs" >/dev/null && break
  sleep 1
done
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1800,560 --virtual-time-budget=15000 \
  --screenshot="$out" "http://127.0.0.1:$port/#hparams"
echo "wrote $out"
