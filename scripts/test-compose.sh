#!/usr/bin/env bash
# `make test-compose`: compose/ on a real Docker engine. Where no engine runs, installs
# Debian's docker.io, docker-compose and debootstrap and starts dockerd for the run (stopped
# again at the end); where one runs, uses it. Then builds any missing base image locally
# (compose/base-images.sh: no registry is needed), builds the project's images, and runs
# the compose conformance test, which starts the stack, drives it and removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/docker_engine.sh
trap docker_engine_down EXIT
docker_engine_up test-compose

started=$SECONDS
compose/base-images.sh
echo "test-compose: base images ready in $((SECONDS - started)) s" >&2

started=$SECONDS
"${compose[@]}" -f compose/compose.yaml build
echo "test-compose: images built in $((SECONDS - started)) s;" \
  "tollgate:local is $(docker image inspect --format '{{.Size}}' tollgate:local | awk '{printf "%.1f MB", $1 / 1e6}')" >&2

cargo test -p tollgate-conformance --test compose -- --ignored --test-threads=1
