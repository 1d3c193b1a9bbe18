# Sourced by the scripts that run compose/ on a real Docker engine (test-compose.sh,
# test-compose-ha.sh). `docker_engine_up NAME`: where no engine answers, installs Debian's
# docker.io, docker-compose and debootstrap and starts dockerd for this run (its log in
# .run/dockerd.log), stopped again by `docker_engine_down`; where one answers, uses it and
# leaves it running. Then sets `compose` (an array) to the Compose command: TOLLGATE_COMPOSE,
# else `docker compose` when the Docker CLI has it, else Debian's `docker-compose` 1.29; and
# exports TOLLGATE_COMPOSE so that what runs next uses the same one.
source "$(dirname "${BASH_SOURCE[0]}")/need_apt.sh"

dockerd_pid=""

docker_engine_up() {
  local name=$1
  if ! docker info >/dev/null 2>&1; then
    need_apt docker.io docker-compose debootstrap
    echo "$name: starting a Docker engine (log: .run/dockerd.log)" >&2
    mkdir -p .run
    dockerd >.run/dockerd.log 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { echo "$name: dockerd did not start; see .run/dockerd.log" >&2; return 1; }
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
}

# Stops the engine docker_engine_up started, if it started one; an engine that was already
# running is left alone.
docker_engine_down() {
  [ -n "$dockerd_pid" ] || return 0
  echo "stopping the Docker engine this run started" >&2
  kill "$dockerd_pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$dockerd_pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$dockerd_pid" 2>/dev/null || true
}
