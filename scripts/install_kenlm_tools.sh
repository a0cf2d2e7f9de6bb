#!/usr/bin/env bash
# Build KenLM's `lmplz` (ARPA estimation) and `build_binary` (ARPA -> binary)
# from the KenLM source distribution on PyPI and install them into a prefix.
#
# Usage: scripts/install_kenlm_tools.sh [PREFIX]      (default: /usr/local/bin)
#
# Environment:
#   KENLM_VERSION  PyPI version of the `kenlm` sdist to build (default 0.3.0)
#   KENLM_SDIST    path to an already downloaded kenlm-*.tar.gz (skips pip)
#   PIP            pip command to download the sdist (default: python3 -m pip)
#   JOBS           parallel compile jobs (default: nproc)
#
# Idempotent: does nothing when PREFIX already holds lmplz and build_binary.
set -euo pipefail

PREFIX="${1:-/usr/local/bin}"
KENLM_VERSION="${KENLM_VERSION:-0.3.0}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { echo "[install_kenlm_tools] $*" >&2; }

if [[ -x "$PREFIX/lmplz" && -x "$PREFIX/build_binary" ]]; then
  log "lmplz and build_binary already in $PREFIX; nothing to do"
  exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# --- Debian build dependencies (only the missing ones; apt-get update only if needed).
# KenLM's CMakeLists requires Boost program_options, system, thread AND
# unit_test_framework (even with tests off), hence libboost-test-dev.
DEPS=(cmake g++ make libboost-program-options-dev libboost-system-dev
      libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
MISSING=()
for p in "${DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING+=("$p")
done
if (( ${#MISSING[@]} )); then
  log "installing build deps: ${MISSING[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
fi

WORK="$(mktemp -d -t kenlm-build.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# --- Source: the PyPI sdist of the `kenlm` package contains the full C++ tree.
if [[ -n "${KENLM_SDIST:-}" ]]; then
  SDIST="$KENLM_SDIST"
else
  if [[ -z "${PIP:-}" ]]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
    fi
    PIP="python3 -m pip"
  fi
  # --no-binary kenlm (NOT :all:, which would also force building the `cmake`
  # build requirement from source: ~10+ minutes).
  log "downloading kenlm==$KENLM_VERSION sdist from PyPI"
  $PIP download --quiet --no-deps --no-binary kenlm --dest "$WORK" "kenlm==$KENLM_VERSION"
  SDIST="$(ls "$WORK"/kenlm-*.tar.gz | head -n1)"
fi
tar -xzf "$SDIST" -C "$WORK"
SRC="$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'kenlm*' | head -n1)"
[[ -f "$SRC/lm/builder/lmplz_main.cc" ]] || { log "no lmplz sources in $SDIST"; exit 1; }

# --- Build only the two executables.
log "building lmplz and build_binary in $WORK (jobs=$JOBS)"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DCOMPILE_TESTS=OFF -DENABLE_PYTHON=OFF -DCMAKE_CXX_FLAGS=-Wno-deprecated-declarations -DCMAKE_DISABLE_FIND_PACKAGE_Eigen3=ON >/dev/null
cmake --build "$WORK/build" --target lmplz build_binary -j "$JOBS" >/dev/null

$SUDO mkdir -p "$PREFIX"
$SUDO install -m 0755 "$WORK/build/bin/lmplz" "$WORK/build/bin/build_binary" "$PREFIX/"
log "installed $PREFIX/lmplz and $PREFIX/build_binary"
