#!/bin/bash
# CPU time the gateway spends per request at 32 connections: the gateway process's
# utime+stime (from /proc) over an 8 s wrk run, divided by the requests served. A steadier
# figure than requests/s on a machine whose speed drifts between runs; compare two trees by
# alternating runs in one sitting:
#   for i in 1 2 3 4; do bench/cpu_per_request.sh /tmp/before; bench/cpu_per_request.sh .; done
# usage: cpu_per_request.sh TREE   (a checkout of this repository; runs with .venv of this one)
# An older tree under this .venv's newer entry points: EXTRA_CONFIG='disable_plugins: [cache, judges]'
# (the plugins it lacks) is appended to the gateway's config.
set -euo pipefail
TREE=$(cd "${1:-.}" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=$HERE/.venv/bin/python
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
UP=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
GW=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
cat > "$D/bench.yaml" <<Y
backends:
  - name: upstream
    plugin: openai_compatible
    base_url: http://127.0.0.1:$UP/v1
    model: bench-model
    pricing: {input_per_mtok: 0.15, output_per_mtok: 0.60}
    energy: {watts_busy: 300, grid_g_per_kwh: 400}
routes:
  - name: bench
    backends: [upstream]
ledger: {kind: sqlite, path: $D/ledger.sqlite3}
log_level: warning
${EXTRA_CONFIG:-}
Y
cat > "$D/w.lua" <<'L'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{"model": "bench", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}]]
L
cd "$TREE"
taskset -c 1 "$PY" "$HERE/bench/upstream.py" "$UP" & UPP=$!
PYTHONPATH=$TREE taskset -c 0 "$PY" -m gateway.cli serve --config "$D/bench.yaml" --port "$GW" 2>/dev/null & GWP=$!
# up when /healthz answers (a loaded machine, or a database ledger, can take longer than 4 s)
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$GW/healthz" >/dev/null && break; sleep 0.5; done
sleep 1
T0=$(awk '{print $14+$15}' "/proc/$GWP/stat")
OUT=$(taskset -c 1 wrk -t1 -c32 -d8s -s "$D/w.lua" "http://127.0.0.1:$GW/v1/chat/completions")
T1=$(awk '{print $14+$15}' "/proc/$GWP/stat")
kill -INT $GWP; wait $GWP || true; kill -9 $UPP; wait $UPP 2>/dev/null || true
N=$(echo "$OUT" | awk '/requests in/ {print $1}')
echo "$OUT" | grep -q "Non-2xx" && { echo "non-2xx responses: no figure" >&2; exit 1; }
TICK=$(getconf CLK_TCK)
awk -v c="$(git -C "$TREE" rev-parse --short HEAD)" -v n="$N" -v t=$((T1-T0)) -v k="$TICK" 'BEGIN {printf "%s requests=%d cpu_s=%.2f us_per_request=%.0f\n", c, n, t/k, t/k*1e6/n}'
