#!/usr/bin/env bash
# Tools outside Python that the tts_en recipe (and its CI test) needs:
#   espeak-ng and bible-kjv from Debian (speech synthesis; public-domain King James text), and
#   KenLM's lmplz + build_binary (built from source by install_kenlm_tools.sh into PREFIX).
# Usage: scripts/install_system_tools.sh [PREFIX]     (default PREFIX for lmplz: /usr/local/bin)
# Needs root or sudo for the Debian packages; tools already on PATH are not installed again.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PREFIX="${1:-/usr/local/bin}"
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "[install_system_tools] not root and no sudo: install espeak-ng and bible-kjv yourself" >&2; fi
fi
PKGS=()
command -v espeak-ng >/dev/null 2>&1 || PKGS+=(espeak-ng)
command -v bible >/dev/null 2>&1 || PKGS+=(bible-kjv)
if (( ${#PKGS[@]} )) && [[ "$(id -u)" -eq 0 || -n "$SUDO" ]]; then
  echo "[install_system_tools] apt-get install ${PKGS[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi
if ! command -v lmplz >/dev/null 2>&1 || ! command -v build_binary >/dev/null 2>&1; then
  "$HERE/install_kenlm_tools.sh" "$PREFIX"
fi
