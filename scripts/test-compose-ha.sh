#!/usr/bin/env bash
# `make test-compose-ha`: compose/ha.yaml, the high-availability topology, on a real Docker
# engine (started for the run where none answers, as `make test-compose` does). Builds any
# missing base image locally (compose/base-images.sh) and the project's images, then
# scripts/compose_ha_test.py starts the stack under a project name of its own, sends traffic
# through both Envoys while it stops, kills and cuts off replicas one at a time, accounts for
# every request, and removes the stack. The stack is removed here too (`down -v`) whatever
# happened, and the engine stopped if this run started it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/docker_engine.sh

export TOLLGATE_HA_PROJECT="tollgate-ha-test-$$"
compose=()

cleanup() {
  local status=$?
  if ((${#compose[@]})) && [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$TOLLGATE_HA_PROJECT" 2>/dev/null)" ]; then
    echo "test-compose-ha: removing what is left of $TOLLGATE_HA_PROJECT" >&2
    "${compose[@]}" --project-name "$TOLLGATE_HA_PROJECT" -f compose/ha.yaml down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  docker_engine_down
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

docker_engine_up test-compose-ha

started=$SECONDS
compose/base-images.sh
"${compose[@]}" -f compose/ha.yaml build
echo "test-compose-ha: images ready in $((SECONDS - started)) s (${compose[*]})" >&2

python3 scripts/compose_ha_test.py
