#!/usr/bin/env bash
# Downloads (here, where pip reaches PyPI) the cp312 wheels that the lent GPU machine lacks, into .whl/ (git-ignored
# through .git/info/exclude), for benchmarks/gpu_check.sh: carry .whl with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
P=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl)
for plat in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  P+=(--platform "$plat")
done
python3 -m pip download "${P[@]}" zarr==3.1.5 numcodecs==0.16.6 donfig google-crc32c jiwer rapidfuzz
# transformers and what it needs beyond torch/numpy, for gpu_check.sh's Hugging Face teacher step (issue #27)
python3 -m pip download "${P[@]}" transformers safetensors tokenizers huggingface-hub regex typer click \
  shellingham rich markdown-it-py mdurl pygments hf-xet filelock fsspec packaging pyyaml tqdm typing-extensions \
  || echo "transformers wheels not downloaded: gpu_check.sh skips the HF teacher step"
ls -la .whl
