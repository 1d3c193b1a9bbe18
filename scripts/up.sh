#!/usr/bin/env bash
# `make up`: demo upstreams, the control plane, ext-authz, the rate-limit service and Envoy
# on examples/routes.yaml, in the foreground until Ctrl-C, which stops all of them.
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
  exit 0
}
trap stop INT TERM EXIT

wait_for() { # URL: poll until it answers 2xx (30 s)
  for _ in $(seq 1 150); do
    python3 -c "import urllib.request as u; u.urlopen('$1', timeout=1)" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "gave up waiting for $1; see $RUN/*.log" >&2
  return 1
}

"$BIN_DIR/tollgate-control-plane" validate "$ROUTES"
# Fresh demo credentials every start: a throwaway RSA key, never committed.
python3 scripts/demo_token.py init "$RUN"

python3 scripts/demo_upstream.py invoice-service 3000 & pids+=($!)
python3 scripts/demo_upstream.py invoice-service-2 3001 & pids+=($!)
python3 scripts/demo_upstream.py account-service 3100 & pids+=($!)
python3 scripts/demo_upstream.py storefront 3200 & pids+=($!)
python3 scripts/demo_upstream.py storefront-v2 3201 & pids+=($!)

export TOLLGATE_LOG=${TOLLGATE_LOG:-info}
"$BIN_DIR/tollgate-control-plane" serve --routes "$ROUTES" \
  --xds-addr 127.0.0.1:18000 --admin-addr 127.0.0.1:18001 2>"$RUN/control-plane.log" & pids+=($!)
"$BIN_DIR/tollgate-ext-authz" --routes "$ROUTES" \
  --grpc-addr 127.0.0.1:9191 --metrics-addr 127.0.0.1:9192 2>"$RUN/ext-authz.log" & pids+=($!)
"$BIN_DIR/tollgate-ratelimit" --routes "$ROUTES" \
  --grpc-addr 127.0.0.1:8081 --metrics-addr 127.0.0.1:9102 2>"$RUN/ratelimit.log" & pids+=($!)
"$ENVOY_BIN" -c envoy/bootstrap.yaml --concurrency 2 -l warning \
  >"$RUN/access.log" 2>"$RUN/envoy.log" & pids+=($!)

wait_for http://127.0.0.1:18001/readyz
wait_for http://127.0.0.1:9192/readyz
wait_for http://127.0.0.1:9102/readyz
wait_for http://127.0.0.1:9901/ready

FREE=$(python3 scripts/demo_token.py mint "$RUN" alice free)
PREMIUM=$(python3 scripts/demo_token.py mint "$RUN" bob premium)
echo "$FREE" > "$RUN/token-free"; echo "$PREMIUM" > "$RUN/token-premium"
API_KEY=$(python3 scripts/demo_token.py api-key "$RUN")

cat <<MSG

Tollgate is up. Logs and demo tokens are in $RUN/ (access log: $RUN/access.log).
  public, no token:   curl -s localhost:8080/api/v1/catalogue/shoes
  protected, 401:     curl -si localhost:8080/api/v1/invoices/42
  protected, token:   curl -s -H "authorization: Bearer \$(cat $RUN/token-free)" localhost:8080/api/v1/invoices/42
  tier limits:        free: 10/minute, premium ($RUN/token-premium): 100/minute, then 429
  API key (partner):  curl -s -H "x-api-key: $API_KEY" localhost:8080/partner/v1/invoices/42
                      (the key is in $RUN/demo-api-key; $RUN/demo-keys.yaml holds only its hash)
  mobile listener:    curl -s -H "authorization: Bearer \$(cat $RUN/token-premium)" localhost:8090/mobile/v1/accounts/7
  second host, canary: for i in \$(seq 10); do curl -s -H 'host: shop.localhost' localhost:8080/; echo; done
  gateway health:     curl -s localhost:8080/health
  control plane:      curl -s localhost:18001/status
  Envoy admin:        http://127.0.0.1:9901 (loopback only)
Edit $ROUTES and Envoy follows within milliseconds. Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a process exited; see $RUN/*.log"
