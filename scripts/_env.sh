# Shared by scripts/demo, scripts/test and scripts/bench: make sure the machine has what fleetgate
# needs (Debian packages, a virtualenv with the project installed). Orchestration only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ensure_debian_packages() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "fleetgate: please install ${missing[*]} (needed by the tests and the demo)" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "fleetgate: installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_test_packages() {  # what only the test suite needs: promtool and systemd-analyze check deploy/,
  # chromium, its driver and NSS's tools run the console's browser tests (tests/console)
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  command -v pk12util >/dev/null || missing+=(libnss3-tools)
  [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)  # the cluster tests (tests/pg.py)
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)  # tests/nats.py
  # scripts/compile: mypyc's C output needs a compiler and Python's headers
  command -v gcc >/dev/null || missing+=(gcc)
  "${PYTHON:-python3}" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    2>/dev/null || missing+=(python3-dev)
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "fleetgate: please install ${missing[*]} (the deploy/, console and cluster checks and scripts/compile use them; skipped otherwise)" >&2
    return 0
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "fleetgate: installing Debian packages for the tests: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {  # $1: "." (what the demo needs) or ".[dev]" (tests and benchmarks too)
  local lock
  case "$1" in
    ".") lock=requirements/base.txt ;;
    ".[dev]") lock=requirements/dev.txt ;;
    *) echo "fleetgate: no lock file for '$1'; use '.' or '.[dev]'" >&2; return 1 ;;
  esac
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
  # Exactly the versions in the lock, each file checked against its SHA-256 (scripts/lock makes the
  # lock from pyproject.toml); then the project itself, with nothing more fetched to build it.
  quiet_pip install --require-hashes -r "$lock" || {
    echo "fleetgate: installing $lock failed (see above); after changing pyproject.toml, run scripts/lock" >&2
    return 1; }
  quiet_pip install --no-deps --no-build-isolation -e . || {
    echo "fleetgate: installing fleetgate itself failed (see above)" >&2; return 1; }
  .venv/bin/python -c "import gateway, pki, device_sim" || {
    echo "fleetgate: installing the Python packages failed (see above)" >&2; return 1; }
}

quiet_pip() {  # pip with its output shown only when it fails (minus a harmless warning of some hosts)
  local out
  if ! out="$(.venv/bin/python -m pip "$@" -q --disable-pip-version-check 2>&1)"; then
    printf '%s\n' "$out" | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    return 1
  fi
}
