#!/usr/bin/env bash
# The one prepared GPU run of issue #14 (the lent H200: Python 3.12, torch with CUDA, numpy 2). From the repo root:
#   ./scripts/gpu_wheels.sh        # here, once: the wheels that machine lacks, into .whl
#   then, on the GPU machine (device tool: carry .whl):  bash benchmarks/gpu_check.sh
# Steps (about 10 minutes on an H200): the cuda tests; a seed-geometry corpus (2,000 utterances, 512-dim, V = 1,229)
# and a 1-epoch 5x384 teacher; dump float16 and compact vs teacher inference alone; train-student from both caches
# vs the CTC-only student (codecs on the host and on the device); the ablation cost (one dump + 3 students vs 3 with
# the live teacher, time and peak GPU memory); a wav2vec2-base-sized Hugging Face teacher (dump vs its bare forward, the
# ablation cost; issue #27); fp32 / bf16 / fp16 training speed. Logs go to $OUT (or runs/gpu).
set -uo pipefail
OUT="${OUT:-runs/gpu}"; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || exit 1
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
OKD=(python3 -m offline_kd)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, numpy, zarr; print('torch', torch.__version__, 'numpy', numpy.__version__, 'zarr', zarr.__version__)" \
  | tee -a "$OUT/gpu.txt"
step() { echo "== $1 ($(date +%T))" | tee -a "$OUT/steps.log"; }

step "cuda tests"
python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -n 5
python3 -m pytest -q -p no:cacheprovider -x tests/test_numerics.py tests/test_distill.py 2>&1 | tail -n 3 \
  | tee "$OUT/cpu_tests_on_gpu_machine.log"

step "corpus and 1-epoch teacher"
D=/tmp/gpu; mkdir -p $D
"${OKD[@]}" data synth --out $D/seed --num-train 2000 --num-dev 200 --num-test 200 --phones-per-unit 2 >/dev/null
"${OKD[@]}" train --config configs/teacher_config.yaml --set data.corpus=$D/seed --set train.epochs=1 \
  --set train.output_dir=$D/teacher --set train.progress=false --set train.device=cuda 2>&1 | tail -n 2 | tee "$OUT/teacher.log"
T=$D/teacher/checkpoint_last.pt
for c in f16 compact; do
  extra=(); [ $c = f16 ] && extra=(--set dump.codecs.log_probs=float16 --set dump.codecs.hidden=float16)
  "${OKD[@]}" dump-teacher --config configs/dump_config.yaml --set dump.teacher=$T --set dump.corpus=$D/seed \
    --set dump.output=$D/$c.zarr --set dump.splits=[train] --set dump.progress=false --set dump.device=cuda \
    "${extra[@]}" >/dev/null 2>&1 || echo "dump $c failed"
done

step "dump vs teacher inference alone"
(cd benchmarks && python3 dump_throughput.py --teacher $T --corpus $D/seed --split train --runs 3 --device cuda \
  --codecs log_probs=float16,hidden=float16 --codecs default --encode-on both) 2>&1 | tee "$OUT/dump_throughput.log" \
  | tail -n 15

step "train-student from the caches vs CTC-only"
(cd benchmarks && python3 train_throughput.py --corpus $D/seed --teacher $T --device cuda \
  --cache float16=$D/f16.zarr --cache compact=$D/compact.zarr --batches 20 --runs 3 --decode-on both) 2>&1 \
  | tee "$OUT/train_throughput.log" | tail -n 15

step "ablation cost: one dump + 3 students from the cache vs 3 with the live teacher (per-student figures give N = 6)"
python3 benchmarks/ablation_cost.py --dump configs/dump_config.yaml --dump-set dump.teacher=$T \
  --dump-set dump.corpus=$D/seed --dump-set "dump.splits=[train,dev]" --distill configs/distillation_config.yaml \
  --set data.corpus=$D/seed --set train.epochs=1 --students 3 --device cuda 2>&1 | tee "$OUT/ablation_cost.log" \
  | tail -n 12

if [ "${WIDE:-0}" = 1 ]; then   # the second size: a teacher 3x wider (5 x BiLSTM(1152)); WIDE=1 adds ~3 min
  step "ablation cost with a teacher 3x wider"
  "${OKD[@]}" train --config configs/teacher_config.yaml --set data.corpus=$D/seed --set train.epochs=1 \
    --set model.hidden_dim=1152 --set train.output_dir=$D/teacher_wide --set train.progress=false \
    --set train.device=cuda 2>&1 | tail -n 1 | tee "$OUT/teacher_wide.log"
  python3 benchmarks/ablation_cost.py --dump configs/dump_config.yaml --dump-set dump.teacher=$D/teacher_wide/checkpoint_last.pt \
    --dump-set dump.corpus=$D/seed --dump-set "dump.splits=[train,dev]" --distill configs/distillation_config.yaml \
    --set data.corpus=$D/seed --set train.epochs=1 --students 3 --device cuda --section ablation-cost-wide 2>&1 \
    | tee "$OUT/ablation_cost_wide.log" | tail -n 12
fi

if python3 -c "import transformers" 2>/dev/null; then   # issue #27: a wav2vec2-base-sized HF teacher (95M)
  step "Hugging Face teacher: dump vs bare forward, ablation cost"
  (cd benchmarks && python3 hf_teacher.py --limit 200 --runs 3 --students 3 --device cuda) 2>&1 \
    | tee "$OUT/hf_teacher.log" | tail -n 20
else
  echo "transformers does not import here: HF teacher step skipped (scripts/gpu_wheels.sh downloads its wheels)" | tee "$OUT/hf_teacher.log"
fi

step "precision: 1 epoch of the seed student, fp32 / bf16 / fp16"
for p in fp32 bf16 fp16; do
  /usr/bin/time -f "$p wall %e s" "${OKD[@]}" train --config configs/student_baseline.yaml --set data.corpus=$D/seed \
    --set train.epochs=2 --set train.precision=$p --set train.output_dir=$D/student-$p --set train.progress=false \
    --set train.device=cuda 2>&1 | grep -E "epoch|wall" | tee -a "$OUT/precision.log"
done
step "done"
