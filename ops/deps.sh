#!/usr/bin/env bash
# The system tools `make test` and `make demo` need, installed from Debian packages when missing.
#
#   java 17+             the local Kafka broker (ops/kafka/kafka.sh)    openjdk-17-jre-headless
#   mvn                  resolves the Kafka jars from Maven Central     maven
#   promtool, prometheus alert-rule tests and a real scrape test        prometheus
#   python3 venv         creates .venv (skipped once .venv exists)      python3-venv
#   postgres, initdb     the CDC tests' and demo's PostgreSQL server    postgresql
#
# Everything present: exits 0 at once and prints nothing. Something missing: as root, runs
# `apt-get update` and `apt-get install` (noninteractive); otherwise prints one line naming the
# packages and the command to install them, and exits 1.
#
# Environment: PYTHON (default python3) and VENV (default .venv) as in the Makefile.
set -euo pipefail

python="${PYTHON:-python3}"
venv="${VENV:-.venv}"

# Java's major version from the JDK's `release` file (no JVM start), else from `java -version`.
java_major() {
  local exe home line version=""
  exe="$(command -v java)" || return 1
  home="$(dirname "$(dirname "$(readlink -f "$exe")")")"
  if [ -r "$home/release" ]; then
    while IFS= read -r line; do
      case "$line" in JAVA_VERSION=*) version="${line#JAVA_VERSION=}" ;; esac
    done <"$home/release"
  fi
  if [ -z "$version" ]; then
    line="$(java -version 2>&1 | head -n 1)" || return 1
    version="${line#*\"}"
  fi
  version="${version#\"}"
  version="${version#1.}" # Java 8 and older say 1.8.0
  echo "${version%%[!0-9]*}"
}

# The Java package this release of Debian/Ubuntu has (trixie has no openjdk-17).
java_package() {
  if apt-cache show openjdk-17-jre-headless >/dev/null 2>&1; then
    echo openjdk-17-jre-headless
  else
    echo default-jre-headless
  fi
}

missing=()
major="$(java_major || true)"
if [ -z "$major" ] || [ "$major" -lt 17 ]; then missing+=("$(java_package)"); fi
command -v mvn >/dev/null || missing+=(maven)
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then missing+=(prometheus); fi
# Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<major>/bin.
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && ! command -v postgres >/dev/null; then
  missing+=(postgresql)
fi
if [ ! -x "$venv/bin/python" ] && ! "$python" -c "import venv, ensurepip" 2>/dev/null; then
  missing+=(python3-venv)
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian package(s) ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "deps: installing ${missing[*]} with apt-get" >&2
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
