#!/usr/bin/env bash
# Mutation testing with mutmut on one module, against the tests that should catch its bugs. Runs in a temporary
# copy of the repository (mutmut rewrites sources), prints the surviving mutants with their diffs.
#
#   scripts/mutation_test.sh offline_kd/losses/kd.py tests/test_losses.py tests/test_hybrid_loss_values.py
#   scripts/mutation_test.sh offline_kd/cache/integrity.py tests/test_integrity.py
#
# Not part of CI (minutes per module); run it before a change to offline_kd/losses, offline_kd/cache or the resume
# paths lands, and list what survives in docs/testing.md (or kill it with a test). Needs `pip install mutmut`.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MODULE.py TEST_FILE [TEST_FILE ...]" >&2; exit 2; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="$1"; shift
[ -f "$ROOT/$MODULE" ] || { echo "error: no module $MODULE" >&2; exit 2; }
command -v mutmut >/dev/null || { echo "error: mutmut is not installed (pip install mutmut)" >&2; exit 2; }
WORK="$(mktemp -d -t offline-kd-mutmut-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/offline_kd" "$ROOT/tests" "$ROOT/docs" "$ROOT/configs" "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$WORK/"
{
  echo
  echo "[mutmut]"
  echo "source_paths = offline_kd"
  echo "only_mutate = $MODULE"
  echo "pytest_add_cli_args_test_selection ="
  for t in "$@"; do echo "    $t"; done
  echo "also_copy ="
  echo "    tests"
  echo "    docs"
  echo "    configs"
} >> "$WORK/setup.cfg"
cd "$WORK"
# one thread: mutmut forks after running the tests once, and a forked child inherits a busy OpenMP pool and hangs
export OFFLINE_KD_TEST_THREADS=1 OMP_NUM_THREADS=1
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" >/dev/null 2>&1 || true
total=$(mutmut results --all true 2>/dev/null | grep -c ": " || true)
survivors=$(mutmut results 2>/dev/null | grep ": survived" | awk '{print $1}' | tr -d ':' || true)
echo "$MODULE: $total mutants, $(echo -n "$survivors" | grep -c . || true) survived"
for m in $survivors; do
  echo "--- $m"
  mutmut show "$m" 2>/dev/null | grep '^[-+][^-+]' || true
done
