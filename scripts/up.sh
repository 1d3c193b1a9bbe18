#!/usr/bin/env bash
# `make up`: demo upstreams, the control plane and Envoy on examples/routes.yaml, in the
# foreground until Ctrl-C, which stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/release}
ENVOY_BIN=${ENVOY_BIN:-.venv/bin/envoy}
ROUTES=examples/routes.yaml
RUN=.run
mkdir -p "$RUN"

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$BIN_DIR/tollgate-control-plane" validate "$ROUTES"

python3 scripts/demo_upstream.py invoice-service 3000 & pids+=($!)
python3 scripts/demo_upstream.py invoice-service-2 3001 & pids+=($!)
python3 scripts/demo_upstream.py account-service 3100 & pids+=($!)

TOLLGATE_LOG=${TOLLGATE_LOG:-info} "$BIN_DIR/tollgate-control-plane" serve --routes "$ROUTES" \
  --xds-addr 127.0.0.1:18000 --admin-addr 127.0.0.1:18001 2>"$RUN/control-plane.log" & pids+=($!)
"$ENVOY_BIN" -c envoy/bootstrap.yaml --concurrency 2 -l warning 2>"$RUN/envoy.log" & pids+=($!)

for _ in $(seq 1 150); do
  python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:9901/ready", timeout=1)' 2>/dev/null && break
  sleep 0.2
done

cat <<MSG

Tollgate is up (logs in $RUN/).
  public listener:  curl -s localhost:8080/api/v1/invoices/42
  mobile listener:  curl -s localhost:8081/mobile/v1/accounts/7
  control plane:    curl -s localhost:18001/status
  Envoy admin:      http://127.0.0.1:9901 (loopback only)
Edit $ROUTES and Envoy follows within milliseconds. Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a process exited; see $RUN/*.log"
