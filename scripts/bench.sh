#!/usr/bin/env bash
# `make bench`: every benchmark the issues name, each beside its reference measured in the
# same run, written to BENCHMARKS.md. This machine is small and noisy: read medians and
# ratios, not absolute numbers. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${1:-target/release}
EDITS=${TOLLGATE_BENCH_EDITS:-60}
FLEET_EDITS=${TOLLGATE_BENCH_FLEET_EDITS:-20}
# Seconds per load run and rounds of the end-to-end benchmarks (under 3 minutes at 5 and 3).
E2E_SECONDS=${TOLLGATE_BENCH_E2E_SECONDS:-5}
E2E_ROUNDS=${TOLLGATE_BENCH_E2E_ROUNDS:-3}
out=$(mktemp)

# The end-to-end benchmarks' load generator (wrk), which `make test` does not need.
TOLLGATE_PROVISION_BENCH=1 scripts/provision.sh

{
  echo "# Benchmarks"
  echo
  echo "Made by \`make bench\` on $(date -u +%Y-%m-%d) on $(nproc) cores ($(uname -m)), every"
  echo "process of a benchmark and its reference on the same machine in the same run."
  echo "The machine is shared and noisy: compare ratios within a table, not across runs."
  echo "Binaries are release builds (fat LTO, one codegen unit); the sidecars and their benches"
  echo "allocate with jemalloc (\`tollgate_sidecar::grpc::Allocator\`)."
  echo
  echo "## Config reload: routes.yaml write → new route answering through Envoy (issue 2)"
  echo
  echo "\`$BIN_DIR/reload_latency $EDITS\`: $EDITS edits per row, each written by rename, timed until"
  echo "the new route answers. Reference: Envoy reloading the same route table from a file it"
  echo "watches itself (\`path_config_source\` + \`watched_directory\`), no control plane."
  echo
  "$BIN_DIR/reload_latency" "$EDITS"
  echo
  echo "## A fleet of Envoys: routes.yaml write → every node has ACKed the new route table (issue 21)"
  echo
  echo "\`$BIN_DIR/xds_fleet $FLEET_EDITS\`: simulated Envoys (an ADS client on envoy-types, one"
  echo "connection and stream per node, subscribing CDS and LDS as wildcards and RDS for its"
  echo "listeners' route tables, ACKing every response), then three real Envoys. Each edit"
  echo "changes one route and one cluster of R routes (each with its own service, so R clusters);"
  echo "the time runs from the write to the last node's ACK of the new route table. CPU and RSS"
  echo "are the control plane's (\`/proc\`), CPU per edit from the write to the last ACK; so are"
  echo "the bytes written per node per edit (\`wchar\`). The second table is the reference for"
  echo "the rows of 1,000 nodes and more: a bare process writes the same bytes to as many loopback"
  echo "connections, one write per node per edit, and its CPU is what the kernel alone charges."
  echo
  "$BIN_DIR/xds_fleet" "$FLEET_EDITS"
  echo
  echo "## JWT checks: direct gRPC Check calls (issue 3)"
  echo
  echo "\`cargo bench -p tollgate-ext-authz --bench check\`; the crypto limit beside it is"
  echo "\`openssl speed -seconds 3 rsa2048 ecdsap256\`, which the bench runs itself before any server starts."
  echo
  cargo bench -q -p tollgate-ext-authz --bench check 2>/dev/null
  echo
  echo "## Rate limit decisions: direct ShouldRateLimit calls against local Redis (issue 4)"
  echo
  echo "\`cargo bench -p tollgate-ratelimit --bench decisions\` (it runs \`redis-benchmark -t incr -P 16\`"
  echo "against the same Redis as the reference)."
  echo
  cargo bench -q -p tollgate-ratelimit --bench decisions 2>/dev/null
  echo
  echo "\`cargo bench -p tollgate-ratelimit --bench shipped\`: the release binary itself, under a lighter"
  echo "load generator."
  echo
  cargo bench -q -p tollgate-ratelimit --bench shipped 2>/dev/null
  echo
  echo "## Through Envoy: JWT auth, API keys, IP rules, rate limits and the whole chain (issues 3, 4, 5, 20, 23 and 24)"
  echo
  echo "\`$BIN_DIR/e2e_bench $E2E_SECONDS $E2E_ROUNDS\`: one Envoy configured by the control plane"
  echo "with tollgate-ext-authz, tollgate-ratelimit and Redis, beside hand-written Envoys using"
  echo "their native \`jwt_authn\` filter for the same provider, all in front of the same upstream;"
  echo "then the same Envoys again under callgrind, counting their instructions per request."
  echo
  TOLLGATE_BIN_DIR="$BIN_DIR" "$BIN_DIR/e2e_bench" "$E2E_SECONDS" "$E2E_ROUNDS"
} | tee "$out"
# The container rows are measured by `make test-compose`, and the soak by `make soak`, not
# here: carry them over.
if [ -f BENCHMARKS.md ]; then
  awk '/^## (Container images|Soak)/{keep=1} /^## / && !/^## (Container images|Soak)/{keep=0} keep' BENCHMARKS.md >> "$out"
fi
mv "$out" BENCHMARKS.md
echo "wrote BENCHMARKS.md"
