#!/usr/bin/env bash
# tts_en recipe: distil a BiLSTM CTC teacher into a small student on speech synthesized by espeak-ng.
#
#   recipes/tts_en/run.sh            full size (about an hour on 2 CPU cores)
#   recipes/tts_en/run.sh --quick    a handful of utterances and tiny models (a few minutes; the CI test)
#   NUM_UNTRANSCRIBED=3000 recipes/tts_en/run.sh   add 3,000 untranscribed utterances for the distilled student
#   NUM_TEACHER_TRAIN=6000 ...                      add 6,000 transcribed utterances that only the teacher trains on
#                                                   (the demo's setting: a teacher that knows more than its student)
#   BPE_VOCAB_SIZE=128 recipes/tts_en/run.sh        sub-words: a sentencepiece BPE model of 128 pieces learnt from
#                                                   the training transcripts; teacher and students predict pieces
#                                                   (data/tts_en_bpe128, runs/tts_en_bpe128; same audio and 4-gram)
#
# Steps: 1. synthesize speech + NeMo manifests (prepare.py)  2. `offline-kd data import` (fbank) + validate
#        3. 4-gram KenLM from training-partition text (lmplz, build_binary)  4. teacher
#        5. CTC-only baseline, side by side with: dump the teacher once (Zarr v3) + verify, distilled student
#        7. report: greedy and beam+LM (alpha/beta tuned per model on dev) on test -> $RUNS/report/report.md
# Needs: espeak-ng and bible-kjv (Debian), lmplz/build_binary (scripts/install_kenlm_tools.sh), offline-kd.
# Idempotent: finished steps are skipped and interrupted training resumes; delete $DATA and $RUNS to start over.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=recipes/tts_en
OKD="${OKD:-offline-kd}"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

if [ "$QUICK" = 1 ]; then
  NAME=tts_en_quick
  SIZES=(--num-train 48 --num-dev 12 --num-test 12 --num-untranscribed "${NUM_UNTRANSCRIBED:-12}"
         --num-teacher-train "${NUM_TEACHER_TRAIN:-12}")
  # tiny models, 2 epochs: checks the plumbing, not the accuracy
  TEACHER=(--set model.hidden_dim=32 --set model.num_layers=4 --set train.epochs=2)
  STUDENT=(--set model.hidden_dim=16 --set model.num_layers=3 --set train.epochs=2)
  TUNE=(--alphas 0,0.5 --betas 0,1 --beam-width 8)
else
  NAME=tts_en
  SIZES=(--num-train "${NUM_TRAIN:-1000}" --num-dev 300 --num-test 300 --num-untranscribed "${NUM_UNTRANSCRIBED:-2000}"
         --num-teacher-train "${NUM_TEACHER_TRAIN:-2000}")
  TEACHER=() STUDENT=() TUNE=()
fi
BASE_DATA="${DATA:-data/$NAME}"    # the synthesized audio and the word 4-gram, whatever the tokenizer
DATA="$BASE_DATA"
TOKENIZER=(--tokenizer char --word-separator "|")
if [ -n "${BPE_VOCAB_SIZE:-}" ]; then
  NAME="${NAME}_bpe$BPE_VOCAB_SIZE" DATA="${BASE_DATA}_bpe$BPE_VOCAB_SIZE"
  TOKENIZER=(--tokenizer bpe --bpe-vocab-size "$BPE_VOCAB_SIZE")
  CLASSES=(--set "model.num_classes=$(( BPE_VOCAB_SIZE + 1 ))")     # the pieces and the blank
  TEACHER+=("${CLASSES[@]}") STUDENT+=("${CLASSES[@]}")
fi
RUNS="${RUNS:-runs/$NAME}"
CACHE="${CACHE:-cache/${NAME}_teacher.zarr}"
START=$(date +%s)
for tool in espeak-ng bible lmplz build_binary; do
  command -v "$tool" >/dev/null || { echo "run.sh: error: $tool not found (see $HERE/README.md, Requirements)" >&2; exit 2; }
done

# 1-2. corpus
python "$HERE/prepare.py" --out "$BASE_DATA/raw" "${SIZES[@]}"
if [ -f "$DATA/corpus/corpus.json" ] && ! grep -q '"frontend"' "$DATA/corpus/corpus.json"; then
  echo "run.sh: error: $DATA/corpus was made by an older recipe (numpy log-mel features); delete $DATA and $RUNS" >&2
  exit 2
fi
if [ ! -f "$DATA/corpus/corpus.json" ]; then
  MANIFESTS=()
  for m in "$BASE_DATA"/raw/*.json; do s=$(basename "$m" .json); MANIFESTS+=(--manifest "$m" --split "$s"); done
  # Kaldi fbank (80 bins, 25 ms / 10 ms) at 16 kHz (espeak-ng's 22.05 kHz resampled), each utterance normalised
  $OKD data import "${MANIFESTS[@]}" --out "$DATA/corpus" "${TOKENIZER[@]}" \
    --cmvn utterance --jobs "$(nproc 2>/dev/null || echo 2)"
fi
$OKD data validate --corpus "$DATA/corpus"

# 3. language model: training-partition text only (no dev/test sentence)
LM="$BASE_DATA/lm"
if [ ! -f "$LM/4gram.bin" ]; then
  mkdir -p "$LM"
  lmplz -o 4 --discount_fallback -S 20% -T "$LM" < "$BASE_DATA/raw/lm_text.txt" > "$LM/4gram.arpa" 2> "$LM/lmplz.log"
  build_binary "$LM/4gram.arpa" "$LM/4gram.bin" > "$LM/build_binary.log" 2>&1
fi

# 4-6. teacher, baseline, dump, distilled student
COMMON=(--set "data.corpus=$DATA/corpus")
train() {  # train CMD CONFIG OUTDIR EXTRA...
  local cmd=$1 cfg=$2 out=$3; shift 3
  local resume=(); [ -f "$out/checkpoint_last.pt" ] && resume=(--resume)
  $OKD "$cmd" --config "$cfg" "${resume[@]}" "${COMMON[@]}" --set "train.output_dir=$out" "$@"
}
# teacher-only transcribed audio (NUM_TEACHER_TRAIN > 0): the teacher trains on it besides the student's
TEACHER_DATA=(); [ -f "$DATA/corpus/teacher_train.h5" ] && TEACHER_DATA=(--set "data.train_split=[train,teacher_train]")
train train "$HERE/configs/teacher.yaml" "$RUNS/teacher" "${TEACHER[@]}" "${TEACHER_DATA[@]}"
# The CTC-only baseline and the dump -> distillation branch are independent: they run side by side, each with
# half the cores (small students use about one core each), the baseline's output going to $RUNS/baseline.log.
CORES=$(nproc 2>/dev/null || echo 2)
HALF=$(( CORES > 1 ? CORES / 2 : 1 ))
mkdir -p "$RUNS"
OMP_NUM_THREADS=$HALF train train "$HERE/configs/baseline.yaml" "$RUNS/baseline" "${STUDENT[@]}" \
  --set train.progress=false > "$RUNS/baseline.log" 2>&1 &
BASELINE=$!
trap 'kill "$BASELINE" 2>/dev/null || true' EXIT     # a failure below must not leave the baseline running
export OMP_NUM_THREADS=$HALF
# untranscribed audio (NUM_UNTRANSCRIBED > 0): cached with train and dev, mixed into the distilled student's training
UNTRANSCRIBED=(); SPLITS="[train,dev]"
if [ -f "$DATA/corpus/untranscribed.h5" ]; then
  UNTRANSCRIBED=(--set "distill.untranscribed_splits=[untranscribed]"); SPLITS="[train,untranscribed,dev]"
fi
# the untranscribed audio's LM 4-best (distill.pseudo_labels: lm), decoded with the teacher's LM weights tuned on dev
LM_TARGETS=()
if [ -f "$DATA/corpus/untranscribed.h5" ]; then
  [ -f "$RUNS/teacher/tune_lm.json" ] || $OKD tune-lm --checkpoint "$RUNS/teacher/checkpoint_best.pt" \
    --corpus "$DATA/corpus" --lm "$LM/4gram.bin" "${TUNE[@]}" --out "$RUNS/teacher/tune_lm.json"
  read -r ALPHA BETA < <(python -c "import json; r = json.load(open('$RUNS/teacher/tune_lm.json'))['test']; print(r['alpha'], r['beta'])")
  LM_TARGETS=(--set "dump.lm_targets={lm: $LM/4gram.bin, splits: [untranscribed], nbest: 4, alpha: $ALPHA, beta: $BETA}")
fi
$OKD dump-teacher --config "$HERE/configs/dump.yaml" --set "dump.teacher=$RUNS/teacher/checkpoint_best.pt" \
  --set "dump.corpus=$DATA/corpus" --set "dump.output=$CACHE" --set "dump.splits=$SPLITS" "${LM_TARGETS[@]}"
$OKD cache verify "$CACHE" --teacher "$RUNS/teacher/checkpoint_best.pt" --sample 16
train train-student "$HERE/configs/distill.yaml" "$RUNS/distilled" "${STUDENT[@]}" --set "distill.cache=$CACHE" \
  "${UNTRANSCRIBED[@]}"
wait "$BASELINE" || { echo "run.sh: error: the baseline failed, see $RUNS/baseline.log" >&2; exit 1; }
trap - EXIT
unset OMP_NUM_THREADS

# 7. comparison on test: greedy, and beam + LM with alpha/beta tuned on dev for each model
$OKD report "$RUNS/teacher" "$RUNS/baseline" "$RUNS/distilled" --out "$RUNS/report" --split test \
  --lm "$LM/4gram.bin" --tune-split dev "${TUNE[@]}"
echo "tts_en: done in $(( ($(date +%s) - START) / 60 )) min $(( ($(date +%s) - START) % 60 )) s; report: $RUNS/report/report.md" >&2
