# The demo's upstreams and token minting (scripts/demo_upstream.py, scripts/demo_token.py):
# Python and openssl on Debian. Build context: the repository root.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends python3 openssl \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/demo_upstream.py scripts/demo_token.py /opt/tollgate/
COPY compose/scripts/http-ready /usr/local/bin/
