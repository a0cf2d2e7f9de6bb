#!/usr/bin/env bash
# The README's main job: the whole offline-kd pipeline on the built-in synthetic demo corpus.
#   1. synthesize the corpus: 600 transcribed training utterances of 32 speakers, 2,400 untranscribed ones of 40
#      further speakers, 1,800 transcribed utterances of 40 more speakers that only the teacher trains on (the
#      labelled data a pretrained teacher has seen and its student has not), dev and test (half of them from 8
#      held-out speakers), text for the LM
#   2. a 3-gram LM on the LM text (when KenLM's lmplz is installed)
#   3. train the teacher (its 2,400 transcribed utterances) and, side by side, the CTC-only student baseline (the
#      student's 600)
#   5. dump the teacher once into a Zarr v3 cache (transcribed, untranscribed, dev; with the LM, the untranscribed
#      audio's LM 4-best too)  6. verify the cache
#   7. distil the student from the cache (transcribed + untranscribed, the latter on the LM 1-best where there is one)
#   8. evaluate all three on the test split, greedy and beam + LM, and print the table (runs/demo/report/report.md)
#   9. transcribe the test split with the distilled student's checkpoint (runs/demo/test_transcripts.jsonl)
# Idempotent: finished steps are skipped, interrupted training resumes (delete runs/demo, cache/demo_teacher.zarr
# and data/demo to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
OKD="${OKD:-offline-kd}"
START=$(date +%s)

if [ ! -f data/demo/teacher_train.h5 ]; then   # (--overwrite: a demo corpus of an older version lacks this split)
  $OKD data synth --overwrite --out data/demo --num-train 600 --num-untranscribed 2400 --untranscribed-speakers 40 \
    --num-teacher-train 1800 --teacher-speakers 40 --num-dev 150 --num-test 150 --num-units 200 \
    --phones-per-unit 2 --num-lm-sentences 20000
fi
LM=()
LMPLZ=$(command -v lmplz || true)
[ -z "$LMPLZ" ] && [ -x "$(dirname "$(command -v python)")/lmplz" ] && LMPLZ="$(dirname "$(command -v python)")/lmplz"
if [ -n "$LMPLZ" ]; then
  if [ ! -f data/demo/lm.arpa ]; then
    "$LMPLZ" -o 3 --discount_fallback -S 10% -T data/demo < data/demo/lm_train.txt > data/demo/lm.arpa.tmp 2> data/demo/lmplz.log
    mv data/demo/lm.arpa.tmp data/demo/lm.arpa
  fi
  LM=(--lm data/demo/lm.arpa --tune-split dev --alphas 0.25,0.5,1 --betas 0,1,2)
else
  echo "demo.sh: lmplz not found: the report has greedy decoding only (see docs/language-models.md)" >&2
fi
train() {  # train CMD CONFIG OUTDIR
  if [ -f "$3/checkpoint_last.pt" ]; then $OKD "$1" --config "$2" --resume; else $OKD "$1" --config "$2"; fi
}
# The teacher and the CTC-only baseline are independent: they train side by side, the baseline on one thread (a
# small student trains faster on one thread than on two), its output going to runs/demo/baseline.log.
# It runs as its own process group (job control on for that one start), so that the clean-up reaches its python
# and not only the subshell around it: a failure below must not leave the baseline training, orphaned.
mkdir -p runs/demo
set -m
OMP_NUM_THREADS=1 train train configs/demo/baseline.yaml runs/demo/baseline > runs/demo/baseline.log 2>&1 < /dev/null &
BASELINE=$!
set +m
trap 'kill -TERM -- -"$BASELINE" 2>/dev/null || true' EXIT
train train configs/demo/teacher.yaml runs/demo/teacher
wait "$BASELINE" || { echo "demo.sh: error: the baseline failed, see runs/demo/baseline.log" >&2; exit 1; }
trap - EXIT
tail -n 1 runs/demo/baseline.log
# with the LM: the untranscribed audio's LM 4-best at the teacher's alpha/beta tuned on dev (dump.lm_targets), which
# the distilled student trains on (distill.pseudo_labels auto: the LM 1-best where the cache holds an N-best)
LM_TARGETS=()
if [ ${#LM[@]} -gt 0 ]; then
  [ -f runs/demo/teacher/tune_lm.json ] || $OKD tune-lm --checkpoint runs/demo/teacher/checkpoint_best.pt \
    --corpus data/demo --lm data/demo/lm.arpa --alphas 0.25,0.5,1 --betas 0,1,2 --out runs/demo/teacher/tune_lm.json
  read -r ALPHA BETA < <(python -c "import json; r = json.load(open('runs/demo/teacher/tune_lm.json'))['test']; print(r['alpha'], r['beta'])")
  LM_TARGETS=(--set "dump.lm_targets={lm: data/demo/lm.arpa, splits: [untranscribed], nbest: 4, alpha: $ALPHA, beta: $BETA}")
fi
$OKD dump-teacher --config configs/demo/dump.yaml "${LM_TARGETS[@]}"
$OKD cache info cache/demo_teacher.zarr
$OKD cache verify cache/demo_teacher.zarr --teacher runs/demo/teacher/checkpoint_best.pt --sample 16
OMP_NUM_THREADS=1 train train-student configs/demo/distill.yaml runs/demo/distilled
$OKD report runs/demo/teacher runs/demo/baseline runs/demo/distilled --out runs/demo/report "${LM[@]}"
# 9. use the student: transcribe the test split with the distilled checkpoint alone (the demo corpus is features,
#    not audio: audio files go in the same way, `offline-kd transcribe CKPT a.wav ...`); the first three lines
$OKD transcribe runs/demo/distilled/checkpoint_best.pt --corpus data/demo --split test --no-progress \
  --out runs/demo/test_transcripts.jsonl
head -n 3 runs/demo/test_transcripts.jsonl
echo "demo: done in $(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s" >&2
