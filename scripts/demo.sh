#!/usr/bin/env bash
# The README's main job: the whole offline-kd pipeline on the built-in synthetic demo corpus.
#   1. synthesize the corpus  2. train the teacher  3. train the CTC-only student baseline
#   4. dump the teacher once into a Zarr v3 cache  5. verify the cache  6. distil the student from the cache
#   7. evaluate all three on the test split and print the comparison table (runs/demo/report/report.md)
# Idempotent: finished steps are skipped, interrupted training resumes (delete runs/demo to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
OKD="${OKD:-offline-kd}"

if [ ! -f data/demo/corpus.json ]; then
  $OKD data synth --out data/demo --num-train 1500 --num-dev 150 --num-test 150 --num-units 200 --phones-per-unit 2
fi
train() {  # train CMD CONFIG OUTDIR
  if [ -f "$3/checkpoint_last.pt" ]; then $OKD "$1" --config "$2" --resume; else $OKD "$1" --config "$2"; fi
}
train train configs/demo/teacher.yaml runs/demo/teacher
train train configs/demo/baseline.yaml runs/demo/baseline
$OKD dump-teacher --config configs/demo/dump.yaml
$OKD cache info cache/demo_teacher.zarr
$OKD cache verify cache/demo_teacher.zarr --teacher runs/demo/teacher/checkpoint_best.pt --sample 16
train train-student configs/demo/distill.yaml runs/demo/distilled
$OKD report runs/demo/teacher runs/demo/baseline runs/demo/distilled --out runs/demo/report
