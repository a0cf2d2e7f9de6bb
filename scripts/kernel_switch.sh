#!/usr/bin/env bash
# The suite's guard against CPU-specific exactness (issue #47): run tests on another math path of this same machine,
# the AVX2 kernels a CPU without AVX-512 takes (ATen, MKL, OpenBLAS and oneDNN each forced to AVX2). A test that
# compares with figures made elsewhere and holds only on the CPU type that made them fails here.
#   scripts/kernel_switch.sh                 the tests that compare numbers with stored figures or across code paths
#   scripts/kernel_switch.sh tests/          the whole suite (7.5 min on the 2-core CI machine)
set -euo pipefail
cd "$(dirname "$0")/.."
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell DNNL_MAX_CPU_ISA=AVX2
if [ $# -eq 0 ]; then
  set -- tests/test_prev_release.py tests/test_codec_conformance.py tests/test_codecs.py tests/test_numerics.py \
         tests/test_hybrid_loss_values.py tests/test_pinned_behaviours.py tests/test_resume.py tests/test_cache.py \
         tests/test_transcribe_export.py
fi
python -m pytest -q -p no:cacheprovider "$@"
