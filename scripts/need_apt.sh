# Sourced by the provisioning scripts. need_apt PACKAGE…: installs the named Debian packages
# with apt-get if any is missing (Debian/Ubuntu; root or sudo).
need_apt() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "$(basename "$0"): installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
