#!/usr/bin/env bash
# Reproduces every figure in docs/benchmarks.md on this machine (CPU: about two hours on 2 cores).
# Steps already done (corpus, teacher, caches) are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
OKD="${OKD:-offline-kd}"
RUNS="${RUNS:-3}"
[ -f data/seed/corpus.json ] || $OKD data synth --out data/seed --num-train 2000 --num-dev 200 --num-test 200 --phones-per-unit 2
T=runs/bench/seed_teacher/checkpoint_best.pt
[ -f "$T" ] || $OKD train --config configs/bench/seed_teacher.yaml --set train.progress=false
# the codec table needs a trained (peaky) teacher: the same teacher trained longer (about 30 min on 2 cores; the
# table in docs/benchmarks.md used this run's best checkpoint after 12 of its 20 epochs, stopped for time)
T20=runs/bench/seed_teacher20/checkpoint_best.pt
[ -f "$T20" ] || $OKD train --config configs/bench/seed_teacher.yaml --set train.progress=false \
    --set train.epochs=20 --set train.output_dir=runs/bench/seed_teacher20
dump() {  # dump NAME CODEC-SETTINGS...
  local out="cache/bench_$1.zarr"; shift
  $OKD dump-teacher --config configs/dump_config.yaml --set dump.teacher=$T --set dump.corpus=data/seed \
      --set dump.output="$out" --set dump.splits=[train] --set dump.progress=false "$@" >/dev/null
}
dump f32 --set dump.codecs.log_probs=float32 --set dump.codecs.hidden=float32
dump f16 --set dump.codecs.log_probs=float16 --set dump.codecs.hidden=float16
dump compact                                      # the compact default of configs/dump_config.yaml
cd benchmarks
# (the dump's throughput is measured below with the 1% preset beside float16 and the compact default)
python train_throughput.py --corpus ../data/seed --teacher ../$T --cache float32=../cache/bench_f32.zarr \
    --cache float16=../cache/bench_f16.zarr --cache compact=../cache/bench_compact.zarr --batches 12 --runs "$RUNS"
python cache_codecs.py --teacher ../$T20 --corpus ../data/seed --split dev --sample 64
# the 1% preset (#30): its codec rows (the same teacher trained 10 epochs) and its dump's throughput
T10=runs/bench/seed_teacher10/checkpoint_best.pt
[ -f "../$T10" ] || (cd .. && $OKD train --config configs/bench/seed_teacher.yaml --set train.progress=false \
    --set train.epochs=10 --set train.output_dir=runs/bench/seed_teacher10)
python cache_codecs.py --teacher ../$T10 --corpus ../data/seed --split dev --sample 64 \
    --only 'float32;float16;default (configs/dump_config.yaml);1% preset (configs/dump_config_1pct.yaml);1% preset with 8 codebooks a layer' \
    --section cache-codecs-1pct --title 'Cache codecs: the 1% preset (#30)'
python dump_throughput.py --teacher ../$T --corpus ../data/seed --split train --runs "$RUNS" \
    --codecs log_probs=float16,hidden=float16 --codecs default --codecs ../configs/dump_config_1pct.yaml \
    --section dump-throughput-1pct
# the codecs on the device (encode_on / decode_on) against the host, side by side
python dump_throughput.py --teacher ../$T --corpus ../data/seed --split train --runs "$RUNS" \
    --codecs log_probs=float16,hidden=float16 --codecs default --encode-on both --section dump-encode-on
python train_throughput.py --corpus ../data/seed --teacher ../$T --cache compact=../cache/bench_compact.zarr \
    --batches 12 --runs "$RUNS" --decode-on both --section train-decode-on
python audio_import.py --runs "$RUNS"        # self-contained: its own audio in a temporary folder
if [ -f ../runs/tts_en/distilled/checkpoint_best.pt ]; then   # the tts_en recipe's student and teacher
  python deploy.py --student ../runs/tts_en/distilled/checkpoint_best.pt \
    --teacher ../runs/tts_en/teacher/checkpoint_best.pt --manifest ../data/tts_en/raw/test.json --repeats "$RUNS"
fi
cd ..
# efficacy on the demo corpus (needs ./scripts/demo.sh first: its teacher, cache, LM and configs)
if [ -f runs/demo/teacher/checkpoint_best.pt ]; then
  python benchmarks/efficacy.py --baseline configs/demo/baseline.yaml --distill configs/demo/distill.yaml \
      --variant "pseudo-labels only=distill.alpha=0" \
      --variant "transcribed only (same loss, 120 epochs)=distill.untranscribed_splits=[];train.epochs=120" \
      --baseline-lrs 0.0015,0.003,0.005 --seeds 0,1,2 --jobs 2 --lm data/demo/lm.arpa --out runs/efficacy
  python benchmarks/ablation_cost.py --dump configs/demo/dump.yaml --distill configs/demo/distill.yaml \
      --students 3 --set train.epochs=3 --device cpu
  python benchmarks/codec_efficacy.py --distill configs/demo/distill.yaml --baseline configs/demo/baseline.yaml \
      --teacher runs/demo/teacher/checkpoint_best.pt \
      --compact-codecs log_probs=topk,topk_k=8,topk_coverage=0.999,topk_tail=lowrank,logits_rank=112,logits_coeff=int8,hidden=lowrank,lowrank_rank=1024,lowrank_coeff=step,lowrank_target_error=0.0085 \
      --compact-codecs tail32+lr192:log_probs=topk,topk_k=8,topk_coverage=0.999,topk_tail=lowrank,logits_rank=32,logits_coeff=int8,hidden=lowrank,lowrank_rank=192,lowrank_coeff=int8 \
      --compact-codecs float16:log_probs=float16,hidden=float16 --seeds 0,1,2,3 --jobs 2 --out runs/efficacy_v2
  python benchmarks/robustness.py --study benchmarks/robustness.yaml --settings demo --section robustness-demo \
      --title "Robustness: the demo setting (#31)"
  python benchmarks/robustness.py --study benchmarks/feature_terms.yaml --settings "demo,demo (1% cache)" \
      --section feature-terms-demo --title "Feature terms on the demo: none, projected MSE, the codebook loss (#30)"
fi
# scale-out and the robustness study (need recipes/tts_en/run.sh first and efficacy.py's tts_en runs, in
# docs/benchmarks.md "tts_en: confidence-aware pseudo-labels": its teacher, corpus, caches and the CTC-only baseline)
# the seed's setting needs only the tts_en corpus and its LM (the study trains its teacher, dumps and runs)
if [ -f data/tts_en/corpus/corpus.json ] && [ -f data/tts_en/lm/4gram.bin ]; then
  python benchmarks/robustness.py --study benchmarks/feature_terms.yaml --settings "seed's setting,seed's setting (1% cache)" \
      --section feature-terms-seed --title "Feature terms in the seed's setting: none, projected MSE, the codebook loss (#30)"
  # tts_en itself (the study trains the recipe's teacher as run.sh does, and dumps it twice)
  python benchmarks/robustness.py --study benchmarks/feature_terms.yaml --settings "tts_en,tts_en (1% cache)" \
      --section feature-terms-tts_en --title "Feature terms on tts_en: none, projected MSE, the codebook loss (#30)"
  # the default recipe with the weak teacher (its row of the robustness study, run alone)
  python benchmarks/robustness.py --settings "weak teacher" --recipes soft --section robustness-weak-teacher-soft \
      --title "Robustness: the default recipe (untranscribed soft) with the weak teacher (#31)"
fi
if [ -f runs/tts_en/teacher/checkpoint_best.pt ]; then
  python benchmarks/robustness.py --study benchmarks/robustness.yaml
  (cd benchmarks && python scaling.py --teacher ../runs/tts_en/teacher/checkpoint_best.pt --corpus ../data/tts_en/corpus \
      --cache ../cache/tts_en_teacher.zarr --split train --nproc 2 --runs 5 --batches 48 --student-hidden 96)
fi
