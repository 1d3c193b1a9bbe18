#!/usr/bin/env bash
# `make test-compose`: compose/ on a real Docker engine. Where no engine runs, installs
# Debian's docker.io, docker-compose and debootstrap and starts dockerd for the run (stopped
# again at the end); where one runs, uses it. Then builds any missing base image locally
# (compose/base-images.sh: no registry is needed), builds the project's images, and runs
# the compose conformance test, which starts the stack, drives it and removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
mkdir -p "$RUN"

source scripts/need_apt.sh

dockerd_pid=""
stop_dockerd() {
  [ -n "$dockerd_pid" ] || return 0
  echo "test-compose: stopping the Docker engine it started" >&2
  kill "$dockerd_pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$dockerd_pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$dockerd_pid" 2>/dev/null || true
}
trap stop_dockerd EXIT

if ! docker info >/dev/null 2>&1; then
  need_apt docker.io docker-compose debootstrap
  echo "test-compose: starting a Docker engine (log: $RUN/dockerd.log)" >&2
  dockerd >"$RUN/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { echo "test-compose: dockerd did not start; see $RUN/dockerd.log" >&2; exit 1; }
else
  command -v debootstrap >/dev/null || need_apt debootstrap
  docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || need_apt docker-compose
fi

if [ -n "${TOLLGATE_COMPOSE:-}" ]; then
  read -r -a compose <<<"$TOLLGATE_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=(docker-compose)
fi
export TOLLGATE_COMPOSE="${compose[*]}"

started=$SECONDS
compose/base-images.sh
echo "test-compose: base images ready in $((SECONDS - started)) s" >&2

started=$SECONDS
"${compose[@]}" -f compose/compose.yaml build
echo "test-compose: images built in $((SECONDS - started)) s;" \
  "tollgate:local is $(docker image inspect --format '{{.Size}}' tollgate:local | awk '{printf "%.1f MB", $1 / 1e6}')" >&2

cargo test -p tollgate-conformance --test compose -- --ignored --test-threads=1
