#!/usr/bin/env python
"""The suite's proof that it catches wrong code: apply known one-line bugs, each to a temporary copy of the
repository, run the tests that should catch it there, and expect them to FAIL.

    python scripts/check_mutants.py            # all mutants (about 3 minutes on 2 cores)
    python scripts/check_mutants.py --only rng_state_not_restored,topk_ignores_coverage
    python scripts/check_mutants.py --list

Exit status 0 when every mutant is killed (its tests fail), 1 when one survives. Each mutant is an exact
source edit: a mutant whose `old` text is no longer in the file is reported as STALE (exit 1), so the list cannot
silently drift from the code. The seven mutants of issue #15 are first; add one here with each bug fixed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant("feature_term_weighted_by_seq_weight", "offline_kd/losses/terms.py",
           "(CodebookCE if codebook else FeatureMSE)(gamma, layer_mapping)",
           "(CodebookCE if codebook else FeatureMSE)(seq_weight, layer_mapping)",
           ("tests/test_hybrid_loss_values.py",)),
    Mutant("seq_term_on_reference_labels", "offline_kd/losses/terms.py",
           "return ctc_loss(i.log_probs, i.teacher_tokens, i.lengths, i.teacher_token_lengths)",
           "return ctc_loss(i.log_probs, i.labels, i.lengths, i.label_lengths)",
           ("tests/test_hybrid_loss_values.py",)),
    Mutant("soft_kl_divided_by_batch_size", "offline_kd/losses/kd.py",
           "return (values * mask).sum() / mask.sum() * temperature ** 2",
           "return (values * mask).sum() / mask.shape[1] * temperature ** 2",
           ("tests/test_hybrid_loss_values.py",)),
    Mutant("dump_resume_ignores_shard_done", "offline_kd/distillation/dump.py",
           "mine = np.asarray([s for s in blocks[env.rank] if not done[s]], dtype=np.int64)",
           "mine = np.asarray([s for s in blocks[env.rank]], dtype=np.int64)",
           ("tests/test_resume.py",)),
    Mutant("rng_state_not_restored", "offline_kd/models/checkpoint.py",
           "def set_rng_state(state: dict) -> None:\n",
           "def set_rng_state(state: dict) -> None:\n    return\n",
           ("tests/test_resume.py",)),
    Mutant("projection_heads_not_restored", "offline_kd/training/trainer.py",
           'self.extra.load_state_dict(ckpt["extra_state_dict"])', "pass",
           ("tests/test_resume.py",)),
    Mutant("topk_ignores_coverage", "offline_kd/cache/codecs/topk.py",
           "reached = np.cumsum(probs, axis=1) >= self.coverage", "reached = np.cumsum(probs, axis=1) >= 2.0",
           ("tests/test_codecs.py",)),
    # added with the fixes of #15
    Mutant("verify_ignores_the_seal", "offline_kd/cache/verify.py",
           "problems += sealed_problems", "pass", ("tests/test_integrity.py",)),
    Mutant("sampled_codec_biased", "offline_kd/cache/codecs/sampled.py",
           "drawn = np.minimum(pos.reshape(f, n) - rows * v, v - 1)",
           "drawn = np.minimum(pos.reshape(f, n) - rows * v + 1, v - 1)", ("tests/test_codecs.py",)),
    Mutant("doc_recipe_prior_tail_uniform", "docs/cache-format.md",
           'elif codec["tail"] == "prior":', 'elif False:', ("tests/test_cache_plain_zarr.py",)),
    # added with the untranscribed-audio and run-safety work (issues #17, #13)
    Mutant("untranscribed_trained_on_empty_labels", "offline_kd/data/targets.py",
           "if labelled is None or bool(labelled.all()):", "if True:", ("tests/test_untranscribed.py",)),
    Mutant("resume_accepts_any_config", "offline_kd/training/trainer.py",
           "    if changed:", "    if False:", ("tests/test_run_safety.py",)),
    Mutant("reader_skips_the_seal", "offline_kd/cache/reader.py",
           "if verify_reads and self.meta.complete:", "if False:", ("tests/test_integrity.py",)),
    Mutant("device_decode_overwrites_the_blank", "offline_kd/cache/codecs/topk.py",
           "slot = torch.where(keep, indices, v)", "slot = indices", ("tests/test_codec_conformance.py",)),
    Mutant("device_topk_ignores_coverage", "offline_kd/cache/codecs/topk.py",
           "reached = torch.cumsum(vals.exp(), 1) >= self.coverage", "reached = torch.cumsum(vals.exp(), 1) >= 2.0",
           ("tests/test_codec_conformance.py",)),
    Mutant("device_encode_skips_whitening", "offline_kd/cache/codecs/lowrank.py",
           'q, scale = int8_encode_torch(c / st["whitening"])', "q, scale = int8_encode_torch(c)",
           ("tests/test_codec_conformance.py",)),
    Mutant("train_splits_not_shifted", "offline_kd/data/splits.py",
           "np.concatenate([v + start for", "np.concatenate([v + 0 * start for", ("tests/test_teacher_data.py",)),
    # views and LM pseudo-labels (#17 items 2 and 3)
    Mutant("weighted_ctc_ignores_weights", "offline_kd/losses/kd.py",
           "return (weights * per / label_lengths.clamp(min=1)).sum() / log_probs.shape[1]",
           "return (per / label_lengths.clamp(min=1)).sum() / log_probs.shape[1]",
           ("tests/test_lm_targets.py::test_weighted_ctc_equals_ctc_for_one_target_of_weight_one_and_splits_by_weight",)),
    Mutant("lm_nbest_stored_worst_first", "offline_kd/decoding/beam.py",
           "for b in next(it)[:n]])", "for b in next(it)[:n][::-1]])",
           ("tests/test_lm_targets.py::test_dump_stores_the_lm_nbest_of_the_cached_log_probs",)),
    Mutant("view_masks_not_seeded_by_utterance", "offline_kd/data/views.py",
           'digest = hashlib.sha256(f"{seed}/{view}/{utterance_id}".encode()).digest()',
           'digest = hashlib.sha256(f"{seed}/{view}".encode()).digest()',
           ("tests/test_views.py::test_views_are_reproducible_per_utterance_view_and_seed",)),
    Mutant("student_views_read_view_0_targets", "offline_kd/distillation/student.py",
           "view_name(n, k) if k is not None and n in viewed else n) for n, (r, _) in zip(names, bases)])",
           "view_name(n, 0) if k is not None and n in viewed else n) for n, (r, _) in zip(names, bases)])",
           ("tests/test_views.py::test_offline_equals_online_with_views",)),
    # safe by default (#29 items 1-3)
    Mutant("checkpoint_loaded_with_pickle", "offline_kd/models/checkpoint.py",
           "ckpt = torch.load(path, map_location=map_location, weights_only=True)",
           "ckpt = torch.load(path, map_location=map_location, weights_only=False)",
           ("tests/test_safety.py::test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing",)),
    Mutant("seal_optional_again", "offline_kd/cache/integrity.py",
           "return ([] if may_lack_seal(root, splits) else [MISSING_SEAL]), False", "return [], False",
           ("tests/test_safety.py::test_a_format_2_cache_without_its_seal_is_refused",)),
    Mutant("feature_hash_not_checked_on_read", "offline_kd/data/corpus.py",
           "if self.verify_features and self.feature_hashes is not None and feature_sha256(x) != self.feature_hashes[i]:",
           "if False:",
           ("tests/test_safety.py::test_changed_features_are_found_by_validate_and_by_train_student",)),
    Mutant("validate_skips_the_feature_hashes", "offline_kd/data/validate.py",
           "changed = set(reader.changed_features()) if check_hashes else set()", "changed = set()",
           ("tests/test_safety.py::test_changed_features_are_found_by_validate_and_by_train_student",)),
    # bring your own audio (#26) and teacher (#27)
    Mutant("import_chunk_reused_for_other_rows", "offline_kd/data/audio_import.py",
           'return str(z["key"]) == c.key and z["stat"].tolist() == c.stat', 'return z["stat"].tolist() == c.stat',
           ("tests/test_audio_import.py::test_a_resumed_import_never_reuses_a_chunk_for_other_rows",)),
    Mutant("import_truncated_wav_accepted", "offline_kd/data/audio.py",
           "        if short:\n            raise AudioError(short)", "        pass",
           ("tests/test_audio_import.py::test_a_truncated_wav_without_a_duration_is_an_error",)),
    Mutant("kept_audio_not_checked_on_read", "offline_kd/data/corpus.py",
           "if self.verify_features and self.audio_hashes is not None and audio_sha256(x) != self.audio_hashes[i]:",
           "if False:", ("tests/test_audio_import.py::test_kept_audio_is_fingerprinted_like_the_features",)),
    Mutant("entry_point_teacher_not_probed", "offline_kd/distillation/dump.py",
           "    probe(teacher, first.reader, first.order[0], layers, device)", "    pass",
           ("tests/test_teachers.py::test_a_wrong_teacher_is_a_one_line_error_and_writes_nothing",)),
    Mutant("pooled_repeat_without_a_blank", "offline_kd/teachers/alignment.py",
           "        if c == c_prev and g == g_prev + 1:", "        if False:",
           ("tests/test_alignment.py::test_pooling_keeps_each_spike_of_the_teachers_path_where_the_student_rate_has_room",)),
    Mutant("pooled_run_over_whole_groups_forgotten", "offline_kd/teachers/alignment.py",
           "g_prev, c_prev, end_prev, t = max(g, (end + 1) // k - 1), c,", "g_prev, c_prev, end_prev, t = g, c,",
           ("tests/test_alignment.py::test_pooling_keeps_each_spike_of_the_teachers_path_where_the_student_rate_has_room",)),
    Mutant("pooled_emission_not_its_surest_frame", "offline_kd/teachers/alignment.py",
           "frame = max(range(t, end + 1), key=lambda f: peak[f])", "frame = t",
           ("tests/test_alignment.py::test_pooling_takes_each_emissions_most_confident_frame_and_each_other_groups_most_blank_one",)),
    Mutant("length_rule_repeats_the_wrong_frame", "offline_kd/teachers/alignment.py",
           "(lengths.to(lp.device) - 1).clamp_min(0)[:, None])", "(lengths.to(lp.device) - 2).clamp_min(0)[:, None])",
           ("tests/test_alignment.py::test_repetition_and_the_length_rule",)),
    Mutant("special_tokens_sent_to_the_blank", "offline_kd/teachers/alignment.py",
           "        elif tok in special:\n            target.append(None)",
           "        elif tok in special:\n            target.append(0)",
           ("tests/test_hf_teacher.py::test_the_cache_equals_transformers_own_forward",)),
    Mutant("hf_input_not_normalised", "offline_kd/teachers/huggingface.py",
           "        if not self.do_normalize:\n            return x", "        if True:\n            return x",
           ("tests/test_hf_teacher.py::test_the_cache_equals_transformers_own_forward",)),
    # convergence without a guessed budget (#31)
    Mutant("patience_never_reset_by_a_new_best", "offline_kd/training/trainer.py",
           "self.since_best = 0 if score < best else self.since_best + 1",
           "self.since_best = self.since_best if score < best else self.since_best + 1",
           ("tests/test_early_stop.py::test_patience_counts_evaluations_since_the_last_best_and_stops",)),
    Mutant("confidence_weighting_ignored", "offline_kd/losses/modules.py",
           "ctc_w = conf if ctc_w is None else ctc_w * conf", "ctc_w = ctc_w",
           ("tests/test_confidence.py::test_utterance_weights_of_a_batch",)),
    Mutant("min_confidence_keeps_everything", "offline_kd/distillation/student.py",
           "kept = valid[conf >= threshold] if len(valid) else valid", "kept = valid",
           ("tests/test_confidence.py::test_min_confidence_keeps_the_confident_share_and_logs_it",)),
    Mutant("untranscribed_limit_ignored", "offline_kd/distillation/student.py",
           "out[j], left = (name, reader, idx[:left]), max(0, left - len(idx))",
           "out[j], left = (name, reader, idx), max(0, left - len(idx))",
           ("tests/test_untranscribed.py::test_untranscribed_limit_keeps_the_first_utterances",)),
    Mutant("teacher_verdict_never_warns_of_a_small_gap", "offline_kd/distillation/student.py",
           "    if same and b - t < USEFUL_GAP:", "    if same and b - t < 0:",
           ("tests/test_untranscribed.py::test_teacher_verdict_thresholds",)),
    # codebook targets (#30)
    Mutant("codebook_decode_drops_the_mean", "offline_kd/cache/codecs/codebook.py",
           'return parts.reshape(len(codes), self.num_codebooks * self.sub)[:, :self.dim] + state["mean"]',
           'return parts.reshape(len(codes), self.num_codebooks * self.sub)[:, :self.dim]',
           ("tests/test_codebook.py::test_codebook_round_trip_off_zero_and_with_padding",)),
    Mutant("codebook_kmeans_never_moves_its_centroids", "offline_kd/cache/codecs/codebook.py",
           "        c[filled] = sums[filled] / counts[filled, None].float()\n", "        c[filled] = c[filled]\n",
           ("tests/test_codebook.py::test_kmeans_iterations_lower_the_reconstruction_error",)),
    Mutant("codebook_loss_averages_over_codebooks", "offline_kd/losses/kd.py",
           'reduction="none").view(b, t_max, n).sum(-1)', 'reduction="none").view(b, t_max, n).mean(-1)',
           ("tests/test_codebook.py::test_codebook_loss_is_cross_entropy_summed_over_codebooks_on_valid_frames",)),
    Mutant("codebook_loss_counts_padding", "offline_kd/losses/kd.py",
           "terms.append((ce * mask).sum() / mask.sum().clamp_min(1.0))", "terms.append(ce.mean())",
           ("tests/test_codebook.py::test_codebook_loss_is_cross_entropy_summed_over_codebooks_on_valid_frames",)),
    Mutant("codebook_live_states_not_centred", "offline_kd/cache/codecs/codebook.py",
           'return nearest(self._pad(x.float() - state["mean"]), state["codebooks"], self.sub)\n',
           'return nearest(self._pad(x.float()), state["codebooks"], self.sub)\n',
           ("tests/test_codebook.py::test_codebook_cache_stores_uint8_indexes_and_sealed_codebooks",)),
    Mutant("dump_recomputes_the_fit_sample", "offline_kd/distillation/dump.py",
           "env, device, log, kept if split == first_name else None)", "env, device, log, None)",
           ("tests/test_codebook.py::test_the_fit_samples_teacher_outputs_are_written_not_recomputed",)),
]


def run_mutant(m: Mutant, keep: bool = False) -> tuple[str, float, str]:
    """-> (KILLED | SURVIVED | STALE, seconds, last lines of pytest output)."""
    src = (ROOT / m.file).read_text()
    if src.count(m.old) != 1:
        return "STALE", 0.0, f"{m.file}: the text to mutate occurs {src.count(m.old)} times (expected once)"
    tmp = Path(tempfile.mkdtemp(prefix=f"mutant-{m.name}-"))
    try:
        for d in ("offline_kd", "tests", "configs", "docs", "scripts"):
            shutil.copytree(ROOT / d, tmp / d, ignore=shutil.ignore_patterns("__pycache__"))
        for f in ("setup.cfg", "README.md"):
            shutil.copy(ROOT / f, tmp / f)
        (tmp / m.file).write_text(src.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(tmp) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        check = subprocess.run([sys.executable, "-c", "import offline_kd; print(offline_kd.__file__)"], cwd=tmp,
                               env=env, capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(tmp)):
            return "STALE", 0.0, f"the copy is not what gets imported: {check.stdout.strip()} {check.stderr[-300:]}"
        start = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                             cwd=tmp, env=env, capture_output=True, text=True)
        took = time.perf_counter() - start
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        if res.returncode == 0:
            return "SURVIVED", took, tail
        if res.returncode not in (1,):      # 2-5: interrupted, internal error, usage error, no tests collected
            return "STALE", took, f"pytest exit {res.returncode}: {tail}"
        return "KILLED", took, tail
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutant names")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies (for debugging)")
    args = ap.parse_args()
    chosen = MUTANTS
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {m.name for m in MUTANTS})
        if unknown:
            ap.error(f"unknown mutant(s): {', '.join(unknown)} (see --list)")
        chosen = [m for m in MUTANTS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.file}: {m.old!r} -> {m.new!r}  [{' '.join(m.tests)}]")
        return 0
    bad = 0
    print("| mutant | file | result | seconds | tests |\n|---|---|---|---|---|")
    for m in chosen:
        status, took, tail = run_mutant(m, args.keep)
        bad += status != "KILLED"
        print(f"| {m.name} | {m.file} | {status} | {took:.1f} | {' '.join(m.tests)} |", flush=True)
        if status != "KILLED":
            print(f"    {tail}", file=sys.stderr)
    print(f"\n{len(chosen) - bad} of {len(chosen)} mutants killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
