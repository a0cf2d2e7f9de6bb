"""The `offline-kd` command line: parses options, loads configs, calls one command module. No tensor math here.

Every user mistake surfaces as `OfflineKDError` from the library and is printed here as one line with exit code 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings

import click

from offline_kd import __version__
from offline_kd.errors import OfflineKDError, as_flags, user_message


def _friendly(fn):
    """Turn library errors into one-line click errors (exit 1), never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OfflineKDError as exc:
            raise click.ClickException(as_flags(user_message(exc))) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def _log(msg: str) -> None:
    click.echo(as_flags(msg), err=True)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (zarr's ZarrUserWarning, torch's UserWarning) as one line on stderr, without the source
    line Python would print beside them."""
    text = " ".join(str(message).split())
    click.echo(f"warning ({category.__name__}): {text}", err=True)


def _result(out: dict) -> None:
    """Print a command's JSON result (under torchrun: once, from rank 0)."""
    if os.environ.get("RANK", "0") == "0":
        click.echo(json.dumps(out))


set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value (repeatable), e.g. --set train.epochs=5.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="offline-kd")
def main():
    """offline-kd: run a CTC teacher once, cache its outputs (Zarr v3), distil students from the cache."""
    warnings.showwarning = _one_line_warning


# ------------------------------------------------------------------------------------------------------ data
@main.group()
def data():
    """Create, import and validate HDF5 corpora."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output corpus directory.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--num-train", default=2000, show_default=True, help="Training utterances.")
@click.option("--num-dev", default=200, show_default=True, help="Dev utterances.")
@click.option("--num-test", default=200, show_default=True, help="Test utterances.")
@click.option("--num-untranscribed", default=0, show_default=True,
              help="Utterances of training speakers without transcripts (split 'untranscribed').")
@click.option("--untranscribed-speakers", default=0, show_default=True,
              help="Speakers of the untranscribed audio, heard nowhere else (0: the training speakers).")
@click.option("--num-teacher-train", default=0, show_default=True,
              help="Transcribed utterances for the teacher only (split 'teacher_train'), standing in for the "
                   "labelled data a pretrained teacher saw and its student has not.")
@click.option("--teacher-speakers", default=0, show_default=True,
              help="Speakers of 'teacher_train', heard nowhere else (required with --num-teacher-train).")
@click.option("--num-lm-sentences", default=0, show_default=True,
              help="Text-only sentences added to lm_train.txt (for an n-gram LM), beside the train transcripts.")
@click.option("--feature-dim", default=512, show_default=True, help="Feature dimension.")
@click.option("--num-units", default=1228, show_default=True, help="Word units (the vocabulary adds the blank).")
@click.option("--num-phones", default=48, show_default=True, help="Phone inventory the units are spelled with.")
@click.option("--phones-per-unit", default=3, show_default=True, help="Phones per word unit.")
@click.option("--num-speakers", default=40, show_default=True, help="Speakers (the last 8 appear only in dev/test).")
@click.option("--snr-db", nargs=2, type=float, default=(4.0, 20.0), show_default=True,
              help="Range of per-utterance signal-to-noise ratios in dB.")
@click.option("--zipf", default=1.1, show_default=True,
              help="Zipf exponent of the unit frequencies (lower: rare units are heard more often).")
@click.option("--latent-dim", default=0, show_default=True,
              help="Phones live in a space of this size, projected onto the features (0: the feature space).")
@click.option("--allophones", default=1, show_default=True,
              help="Variants per phone, chosen by the phone before it (context-dependent acoustics).")
@click.option("--allophone-spread", default=0.6, show_default=True,
              help="How far a phone's variants lie from its centre (0: identical, 1: unrelated).")
@click.option("--overwrite", is_flag=True, help="Replace an existing corpus at --out.")
@_friendly
def data_synth(out, seed, num_train, num_dev, num_test, num_untranscribed, untranscribed_speakers,
               num_teacher_train, teacher_speakers, num_lm_sentences,
               feature_dim, num_units, num_phones,
               phones_per_unit, num_speakers, snr_db, zipf, latent_dim, allophones, allophone_spread,
               overwrite):
    """Write the deterministic synthetic demo corpus (seed geometry by default)."""
    from pathlib import Path
    from offline_kd.data.synth import SynthSpec, write_synth_corpus
    if (Path(out) / "corpus.json").exists() and not overwrite:
        raise OfflineKDError(f"{out} already holds a corpus; use --overwrite to replace it")
    if not 0 <= latent_dim <= feature_dim:
        raise OfflineKDError(f"--latent-dim must be between 0 and --feature-dim ({feature_dim}), got {latent_dim}")
    if allophones < 1:
        raise OfflineKDError(f"--allophones must be at least 1, got {allophones}")
    if not 0.0 <= allophone_spread <= 1.0:
        raise OfflineKDError(f"--allophone-spread must be between 0 and 1, got {allophone_spread}")
    if zipf < 0:
        raise OfflineKDError(f"--zipf must be >= 0, got {zipf}")
    if num_teacher_train < 0 or teacher_speakers < 0:
        raise OfflineKDError("--num-teacher-train and --teacher-speakers must be >= 0")
    if num_teacher_train and not teacher_speakers:
        raise OfflineKDError("--num-teacher-train needs --teacher-speakers (the teacher-only audio's own speakers)")
    spec = SynthSpec(seed=seed, num_train=num_train, num_dev=num_dev, num_test=num_test,
                     num_untranscribed=num_untranscribed, num_lm_sentences=num_lm_sentences,
                     untranscribed_speakers=untranscribed_speakers,
                     num_teacher_train=num_teacher_train, teacher_speakers=teacher_speakers,
                     feature_dim=feature_dim,
                     num_units=num_units, num_phones=num_phones, phones_per_unit=phones_per_unit,
                     num_speakers=num_speakers, test_speakers=min(8, num_speakers // 5),
                     snr_db=tuple(snr_db), zipf=zipf, latent_dim=latent_dim, allophones=allophones,
                     allophone_spread=allophone_spread)
    write_synth_corpus(out, spec, log=_log)


@data.command("import")
@click.option("--manifest", "manifests", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Manifest (repeatable): NeMo JSONL (audio_filepath, duration, text, offset), lhotse "
                   "(.jsonl.gz: CutSet, or RecordingSet + SupervisionSet), an audio list (JSONL {id, audio, text, "
                   "split} or TSV id<TAB>audio<TAB>text[<TAB>split]), or .npy features ({id, features, text}).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output corpus directory.")
@click.option("--split", "split_names", multiple=True,
              help="Split of each --manifest, in order (else each row's 'split' field).")
@click.option("--format", "fmt", type=click.Choice(["auto", "nemo", "lhotse", "list", "features"]), default="auto",
              show_default=True, help="Manifest kind (auto: from the file name and its first row).")
@click.option("--vocab", type=click.Path(dir_okay=False), default=None,
              help="Vocabulary file (token per line, <blank> first); built from the transcripts if omitted.")
@click.option("--tokenizer", type=click.Choice(["char", "word", "bpe"]), default="char", show_default=True,
              help="How transcripts are split into tokens (bpe: sentencepiece sub-words, with --bpe-model or "
                   "--bpe-vocab-size).")
@click.option("--bpe-model", type=click.Path(dir_okay=False), default=None,
              help="bpe: a sentencepiece model (.model, as NeMo and icefall ship them); its pieces are the vocabulary.")
@click.option("--bpe-vocab-size", type=click.IntRange(min=2), default=None,
              help="bpe: learn a sentencepiece BPE model of this many pieces from the 'train' split's transcripts.")
@click.option("--vocab-from-teacher", type=click.Path(exists=False), default=None,
              help="Take the teacher's own vocabulary (an offline-kd checkpoint, or a Hugging Face CTC model "
                   "directory): then the teacher's classes map one to one onto the student's.")
@click.option("--word-separator", default="|", show_default=True, help="Word-separator token (char tokenizer).")
@click.option("--like", "like", type=click.Path(file_okay=False), default=None,
              help="Audio: import as this (training) corpus was: its fbank settings, its CMVN with its own "
                   "statistics, its vocabulary and transcript normalisation, so that its models read the same "
                   "features (the front-end options below are then not used).")
@click.option("--normalize", type=click.Choice(["none", "lower", "upper"]), default="none", show_default=True,
              help="Transcripts: fold case (lower, or upper for a teacher with upper-case letters), remove "
                   "punctuation but apostrophes inside words, collapse whitespace; recorded in corpus.json.")
@click.option("--sample-rate", default=16000, show_default=True, help="Audio: the front end's sample rate (Hz).")
@click.option("--no-resample", is_flag=True, help="Audio: refuse files at another rate instead of resampling.")
@click.option("--num-mel-bins", default=80, show_default=True, help="Audio: Kaldi fbank bins.")
@click.option("--frame-length-ms", default=25.0, show_default=True, help="Audio: analysis window.")
@click.option("--frame-shift-ms", default=10.0, show_default=True, help="Audio: frame shift.")
@click.option("--dither", default=0.0, show_default=True, help="Audio: Kaldi dither (0: reproducible features).")
@click.option("--fbank-preset", type=click.Choice(["kaldi", "lhotse"]), default="kaldi", show_default=True,
              help="Audio: named fbank settings. kaldi: samples in the int16 range, snip_edges, mel bank up to "
                   "Nyquist; lhotse: lhotse's/icefall's Fbank (samples in [-1, 1], no snip_edges, high_freq -400), "
                   "which sherpa-onnx's command line computes for an exported model.")
@click.option("--snip-edges/--no-snip-edges", default=None, help="Audio: Kaldi snip_edges (default: the preset's).")
@click.option("--low-freq", type=float, default=None, help="Audio: lowest mel-bank frequency in Hz (preset: 20).")
@click.option("--high-freq", type=float, default=None,
              help="Audio: highest mel-bank frequency in Hz, <= 0 an offset from Nyquist (kaldi preset: 0, "
                   "lhotse: -400).")
@click.option("--cmvn", type=click.Choice(["none", "global", "utterance"]), default="none", show_default=True,
              help="Audio: feature normalisation (global: statistics of --cmvn-split, stored in corpus.json).")
@click.option("--cmvn-split", default="train", show_default=True, help="Audio: the split global CMVN is taken from.")
@click.option("--keep-audio", is_flag=True, help="Audio: store each utterance's int16 waveform beside its features "
                                                 "(for teachers that read waveforms).")
@click.option("--jobs", default=1, show_default=True, help="Audio: worker processes.")
@click.option("--skip-invalid", is_flag=True,
              help="Audio: leave out unusable rows and list them in OUT/import_skipped.tsv instead of failing.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Audio: progress bar.")
@_friendly
def data_import(manifests, out, split_names, fmt, vocab, tokenizer, bpe_model, bpe_vocab_size, vocab_from_teacher,
                word_separator, like, normalize, sample_rate,
                no_resample, num_mel_bins, frame_length_ms, frame_shift_ms, dither, fbank_preset, snip_edges, low_freq,
                high_freq, cmvn, cmvn_split, keep_audio, jobs, skip_invalid, progress):
    """Build a corpus from audio files (Kaldi fbank) or per-utterance .npy features, and a manifest."""
    from pathlib import Path
    from offline_kd.data.audio_import import AudioImportOptions, import_audio, like_corpus
    from offline_kd.data.frontend import FBANK_PRESETS, FbankOptions
    from offline_kd.data.importer import import_manifest
    from offline_kd.data.manifests import detect_format
    kind = fmt if fmt != "auto" else (detect_format(Path(manifests[0])) if Path(manifests[0]).is_file() else "list")
    given_vocab = None
    if vocab_from_teacher:
        from offline_kd.teachers.vocabulary import teacher_vocabulary
        given_vocab = teacher_vocabulary(vocab_from_teacher)
    vocab_opts = dict(bpe_model=bpe_model, bpe_vocab_size=bpe_vocab_size, given_vocab=given_vocab)
    if kind == "features":
        if len(manifests) > 1 or len(split_names) > 1:
            raise OfflineKDError("a .npy feature manifest is imported alone: one --manifest, at most one --split")
        if like:
            raise OfflineKDError("--like copies an audio front end: a .npy feature manifest has none")
        import_manifest(manifests[0], out, split_names[0] if split_names else None, vocab, tokenizer,
                        word_separator, log=_log, normalize=normalize, **vocab_opts)
        return
    options = AudioImportOptions(
        fbank=FbankOptions(**{**FBANK_PRESETS[fbank_preset], **{k: v for k, v in (
            ("snip_edges", snip_edges), ("low_freq", low_freq), ("high_freq", high_freq)) if v is not None}},
            sample_rate=sample_rate, num_mel_bins=num_mel_bins, frame_length_ms=frame_length_ms,
            frame_shift_ms=frame_shift_ms, dither=dither),
        cmvn=cmvn, cmvn_split=cmvn_split, keep_audio=keep_audio, resample=not no_resample,
        skip_invalid=skip_invalid, jobs=jobs, progress=progress, normalize=normalize)
    if like:
        if vocab_from_teacher:
            raise OfflineKDError("--like takes the corpus's vocabulary: leave out --vocab-from-teacher")
        options, vocab_opts["given_vocab"] = like_corpus(like, options)
    import_audio(list(manifests), list(split_names), out, fmt, vocab, tokenizer, word_separator, options, log=_log,
                 **vocab_opts)


@data.command("validate")
@click.option("--corpus", required=True, type=click.Path(file_okay=False), help="Corpus directory.")
@click.option("--split", "splits", multiple=True, default=["train", "dev", "test"], show_default=True,
              help="Splits to check (repeatable).")
@click.option("--subsampling", default=2, show_default=True, help="Model subsampling (for the CTC length check).")
@click.option("--skip-invalid", is_flag=True, help="Report invalid utterances instead of failing.")
@_friendly
def data_validate(corpus, splits, subsampling, skip_invalid):
    """Check a corpus the way training and dumping will."""
    from offline_kd.data.corpus import Corpus
    from offline_kd.data.validate import validate_split
    c = Corpus(corpus)
    for s in splits:
        r = c.split(s)
        ok = validate_split(r, c.vocab, c.feature_dim, subsampling, skip_invalid, log=_log, check_hashes=True)
        click.echo(f"{s}: {len(ok)}/{len(r)} valid utterances, {int(r.lengths[ok].sum())} frames")


# ----------------------------------------------------------------------------------------------- training
@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Experiment YAML.")
@click.option("--resume", is_flag=True, help="Continue the run in train.output_dir from checkpoint_last.pt.")
@set_option
@_friendly
def train(config_path, resume, overrides):
    """Train a CTC model (teacher, or the CTC-only student baseline)."""
    from offline_kd.config import ExperimentConfig, load_config
    from offline_kd.commands import train as command
    cfg = load_config(config_path, ExperimentConfig, list(overrides))
    out = command.run(cfg, resume=resume, log=_log)
    _result(out)


@main.command("train-student")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Distillation YAML (with a 'distill' section).")
@click.option("--resume", is_flag=True, help="Continue the run in train.output_dir from checkpoint_last.pt.")
@click.option("--online-teacher", default=None,
              help="Compute the targets from this live teacher (a checkpoint, or an entry point or Hugging Face "
                   "model as inline YAML: '{huggingface: DIR}') instead of the cache (for comparison).")
@set_option
@_friendly
def train_student(config_path, resume, online_teacher, overrides):
    """Distil a student from the teacher cache with the hybrid loss (the teacher is never loaded)."""
    from offline_kd.config import ExperimentConfig, load_config
    from offline_kd.commands import train_student as command
    cfg = load_config(config_path, ExperimentConfig, list(overrides))
    out = command.run(cfg, resume=resume, online_teacher=online_teacher, log=_log)
    _result(out)


@main.command("dump-teacher")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Dump YAML.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache from another teacher/corpus/config.")
@set_option
@_friendly
def dump_teacher(config_path, overwrite, overrides):
    """Run the teacher once over the corpus and write its outputs to a Zarr v3 cache (resumable; a sealed cache
    gains the splits dump.splits adds, the teacher running on those only).

    dump.teacher is a checkpoint path, {checkpoint: PATH}, {entry_point: "pkg.mod:load", args: {...}} (with
    input_kind: waveform for a teacher that reads audio) or {huggingface: DIR} (a Wav2Vec2/HuBERT/WavLM CTC
    directory, or a model id such as facebook/wav2vec2-base-960h from the local Hugging Face cache; nothing is
    downloaded). On the command line: --set 'dump.teacher={huggingface: facebook/wav2vec2-base-960h}'."""
    from offline_kd.config import DumpRootConfig, load_config
    from offline_kd.commands import dump_teacher as command
    cfg = load_config(config_path, DumpRootConfig, list(overrides))
    out = command.run(cfg.dump, overwrite=overwrite, log=_log)
    _result(out)


# ---------------------------------------------------------------------------------------------- evaluation
@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Model checkpoint (.pt).")
@click.option("--split", default="test", show_default=True, help="Corpus split to evaluate.")
@click.option("--corpus", default=None, type=click.Path(file_okay=False),
              help="Corpus directory (default: the one the checkpoint was trained on).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--batch-size", default=32, show_default=True, help="Utterances per inference batch.")
@click.option("--skip-invalid", is_flag=True, help="Skip invalid utterances instead of failing.")
@click.option("--decoder", type=click.Choice(["greedy", "beam"]), default="greedy", show_default=True,
              help="Greedy CTC decoding or beam search (pyctcdecode).")
@click.option("--lm", type=click.Path(dir_okay=False), default=None, help="KenLM model (.arpa or binary) for beam.")
@click.option("--alpha", default=0.5, show_default=True, help="LM weight (beam).")
@click.option("--beta", default=1.0, show_default=True, help="Word insertion bonus (beam).")
@click.option("--beam-width", default=32, show_default=True, help="Beam width.")
@click.option("--compare-greedy", is_flag=True, help="Also report greedy WER/CER (beam).")
@click.option("--num-processes", default=1, show_default=True, help="Parallel beam-search processes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--hypotheses", type=click.Path(dir_okay=False), default=None,
              help="Write per-utterance reference/hypothesis pairs to this JSONL file.")
@_friendly
def evaluate(checkpoint, split, corpus, device, batch_size, skip_invalid, decoder, lm, alpha, beta, beam_width,
             compare_greedy, num_processes, as_json, hypotheses):
    """WER/CER, parameters, size and decoding speed of a checkpoint."""
    from offline_kd.commands import evaluate as command
    res = command.run(checkpoint, split, corpus_dir=corpus, device=device, batch_size=batch_size,
                      skip_invalid=skip_invalid, decoder=decoder, lm=lm, alpha=alpha, beta=beta, beam_width=beam_width,
                      compare_greedy=compare_greedy, num_processes=num_processes, log=_log)
    refs, hyps, ids = res.pop("references"), res.pop("hypotheses"), res.pop("utterance_ids")
    if hypotheses:
        with open(hypotheses, "w") as f:
            for u, r, h in zip(ids, refs, hyps):
                f.write(json.dumps({"utterance_id": u, "reference": r, "hypothesis": h}) + "\n")
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"{res['checkpoint']} on {res['split']} ({res['num_utterances']} utterances, {decoder})")
    if "greedy_wer" in res:
        click.echo(f"  greedy  WER {res['greedy_wer']:6.2f}%  CER {res['greedy_cer']:6.2f}%")
    click.echo(f"  {decoder:<7} WER {res['wer']:6.2f}%  CER {res['cer']:6.2f}%")
    click.echo(f"  parameters {res['num_parameters']:,}  size {res['model_size_mb']:.1f} MB  "
               f"decoding {res['frames_per_second']:.0f} frames/s")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("audio", nargs=-1, type=click.Path())
@click.option("--manifest", "manifests", multiple=True, type=click.Path(dir_okay=False),
              help="A speech manifest (repeatable): NeMo JSONL, lhotse, or an audio list, as `data import` reads.")
@click.option("--corpus", default=None, type=click.Path(file_okay=False),
              help="With --split: transcribe that corpus split's features. Alone: borrow its front end (a "
                   "checkpoint that does not carry one).")
@click.option("--split", default=None, help="A split of --corpus to transcribe (corpora of features, e.g. the demo).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Output file (default: standard output).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "text"]), default=None,
              help="jsonl: {id, text, words: [{word, start, end}]} per line; text: id<TAB>text. "
                   "Default: jsonl for an --out ending in .jsonl, else text.")
@click.option("--decoder", type=click.Choice(["greedy", "beam"]), default="greedy", show_default=True)
@click.option("--lm", type=click.Path(dir_okay=False), default=None, help="KenLM model (.arpa or binary) for beam.")
@click.option("--alpha", type=float, default=None,
              help="LM weight (default: the run's tuned value from tune_lm.json beside the checkpoint, else 0.5).")
@click.option("--beta", type=float, default=None, help="Word bonus (default: the run's tuned value, else 1.0).")
@click.option("--beam-width", default=32, show_default=True, help="Beam width.")
@click.option("--jobs", default=1, show_default=True, help="Worker processes decoding audio and computing features.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:N | auto.")
@click.option("--skip-invalid", is_flag=True, help="Transcribe the rest when an input is bad, and list the bad ones.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@_friendly
def transcribe(checkpoint, audio, manifests, corpus, split, out, fmt, decoder, lm, alpha, beta, beam_width, jobs,
               device, skip_invalid, progress):
    """Transcribe audio files, directories of them, manifests or a corpus split with a checkpoint."""
    from offline_kd.commands import transcribe as command
    from offline_kd.inference.job import failed_report, write_output
    res = command.run(checkpoint, list(audio), manifests=list(manifests), corpus=corpus, split=split, device=device,
                      decoder=decoder, lm=lm, alpha=alpha, beta=beta, beam_width=beam_width, jobs=jobs,
                      skip_invalid=skip_invalid, progress=progress, log=_log)
    fmt = fmt or ("jsonl" if out and out.endswith(".jsonl") else "text")
    write_output(res, out, fmt, click.echo)
    for line in failed_report(res.failed):
        _log(line)
    s = res.summary()
    wer = f"; WER {s['wer']:.2f}% CER {s['cer']:.2f}% against the references" if "wer" in s else ""
    _log(f"transcribed {s['utterances']} utterances ({s['audio_hours'] * 3600:.1f} s of audio) in "
         f"{s['wall_seconds']:.1f} s: real-time factor {s['real_time_factor']:.4f} (features "
         f"{s['seconds']['features']:.1f} s, model {s['seconds']['model']:.1f} s, search {s['seconds']['search']:.1f} "
         f"s){wer}" + (f"; {s['failed']} skipped" if s["failed"] else "") + (f"; output: {out}" if out else ""))


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--int8", is_flag=True, help="ONNX: also write model.int8.onnx (onnxruntime dynamic int8 quantisation).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (new or empty).")
@click.option("--corpus", default=None, type=click.Path(file_okay=False),
              help="Borrow the front end of this corpus (a checkpoint that does not carry one); its utterances check "
                   "the export.")
@_friendly
def export(checkpoint, fmt, int8, out, corpus):
    """Export a checkpoint to ONNX (onnxruntime, sherpa-onnx) or TorchScript, checked against PyTorch."""
    from offline_kd.inference.export import export_model
    res = export_model(checkpoint, out, fmt=fmt, int8=int8, corpus=corpus, log=_log)
    for name, path in res.files.items():
        _log(f"wrote {path} ({res.sizes[name] / 1e6:.2f} MB)")
    for name, c in res.check.items():
        if isinstance(c, dict):
            _log(f"check {name} on {res.check['utterances']} utterances ({res.check['source']}): max |log-prob "
                 f"difference| {c['max_abs_diff']:.2e}" + (f" (tolerance {c['tolerance']:g})" if "tolerance" in c
                                                            else "") + f", argmax agreement "
                 f"{100 * c['argmax_agreement']:.2f}%")
    if res.sherpa:
        _log(f"sherpa-onnx: {res.sherpa['command']}")
        if not res.sherpa["command_line_exact"]:
            _log("sherpa-onnx: its command line computes other features than this model was trained on ("
                 + "; ".join(res.sherpa["why"]) + "): use its Python API with the feature config in "
                 f"{out}/sherpa-onnx.json (offline_kd.inference.sherpa.recognizer), or train on "
                 "`data import --fbank-preset lhotse` features")
    _result({"out": res.out_dir, "files": res.files, "sizes": res.sizes, "check": res.check})


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Ablation YAML: base distillation config + grid/runs of variations.")
@click.option("--parallel", type=int, default=None, help="Runs at a time (overrides the config's 'parallel').")
@_friendly
def ablate(config_path, parallel):
    """Train many students against one cache (resumable; failed runs are reported, the others go on)."""
    from offline_kd.commands import ablate as command
    res = command.run(config_path, parallel, log=_log)
    click.echo(res["table"])
    click.echo(f"results: {res['output_dir']}/results.md, results.csv", err=True)


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@main.command("tune-lm")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Model checkpoint (.pt).")
@click.option("--cache", type=str, default=None,
              help="Instead of a checkpoint: a teacher cache, whose cached dev log-probs are searched (any teacher "
                   "the dump took, an ensemble included; no model runs, no test split).")
@click.option("--lm", required=True, type=click.Path(dir_okay=False), help="KenLM model (.arpa or binary).")
@click.option("--alphas", default="0,0.25,0.5,0.75,1.0,1.5", show_default=True, help="LM weights to try.")
@click.option("--betas", default="0,0.5,1,2", show_default=True, help="Word insertion bonuses to try.")
@click.option("--dev-split", default="dev", show_default=True, help="Split the search runs on.")
@click.option("--test-split", default="test", show_default=True, help="Split evaluated with the best pair ('' = none).")
@click.option("--corpus", default=None, type=click.Path(file_okay=False), help="Corpus (default: the checkpoint's).")
@click.option("--beam-width", default=32, show_default=True, help="Beam width.")
@click.option("--num-processes", default=1, show_default=True, help="Parallel beam-search processes.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the full result as JSON here.")
@_friendly
def tune_lm(checkpoint, cache, lm, alphas, betas, dev_split, test_split, corpus, beam_width, num_processes, device,
            out):
    """Search the LM weight (alpha) and word bonus (beta) on dev; evaluate test with the best pair."""
    from offline_kd.commands import tune_lm as command
    if (checkpoint is None) == (cache is None):
        raise OfflineKDError("tune-lm: give --checkpoint (a model) or --cache (a teacher cache), one of them")
    if cache is not None:
        res = command.run_on_cache(cache, lm, _floats(alphas), _floats(betas), dev_split=dev_split,
                                   corpus_dir=corpus, beam_width=beam_width, num_processes=num_processes, out=out,
                                   log=_log)
    else:
        res = command.run(checkpoint, lm, _floats(alphas), _floats(betas), dev_split=dev_split,
                          test_split=test_split or None, corpus_dir=corpus, beam_width=beam_width,
                          num_processes=num_processes, device=device, out=out, log=_log)
    best = res["best"]
    click.echo(f"best on {dev_split}: alpha {best['alpha']:g} beta {best['beta']:g} -> WER {best['wer']:.2f}% "
               f"(greedy {res['dev_greedy_wer']:.2f}%)")
    if "test" in res:
        t = res["test"]
        click.echo(f"{t['split']}: greedy WER {t['greedy_wer']:.2f}% CER {t['greedy_cer']:.2f}%  |  beam+LM WER "
                   f"{t['beam_wer']:.2f}% CER {t['beam_cer']:.2f}%")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate every run on.")
@click.option("--corpus", default=None, type=click.Path(file_okay=False), help="Corpus (default: each run's own).")
@click.option("--lm", type=click.Path(dir_okay=False), default=None, help="KenLM model: adds beam-search columns.")
@click.option("--alpha", default=0.5, show_default=True, help="LM weight (beam).")
@click.option("--beta", default=1.0, show_default=True, help="Word insertion bonus (beam).")
@click.option("--beam-width", default=32, show_default=True, help="Beam width.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--tune-split", default=None, help="With --lm: search alpha/beta per run on this split (e.g. dev).")
@click.option("--alphas", default="0,0.25,0.5,0.75,1.0,1.5", show_default=True, help="LM weights (--tune-split).")
@click.option("--betas", default="0,0.5,1,2", show_default=True, help="Word bonuses (--tune-split).")
@_friendly
def report(run_dirs, out, split, corpus, lm, alpha, beta, beam_width, device, tune_split, alphas, betas):
    """Markdown table (WER/CER, parameters, size, speed) and PNG plots comparing trained runs."""
    from offline_kd.commands import report as command
    if tune_split and not lm:
        raise click.UsageError("--tune-split needs --lm")
    res = command.run(list(run_dirs), out, split=split, corpus=corpus, lm=lm, alpha=alpha, beta=beta,
                      beam_width=beam_width, device=device, tune_split=tune_split, alphas=_floats(alphas),
                      betas=_floats(betas), log=_log)
    click.echo(res["table"])
    click.echo(f"report: {res['report']}", err=True)


# --------------------------------------------------------------------------------------------------- cache
@main.group()
def cache():
    """Inspect and verify teacher caches."""


@cache.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_friendly
def cache_info(path, as_json):
    """Utterances, frames, bytes per field and per frame, codecs and fingerprints of a cache."""
    from offline_kd.cache.info import cache_info as info, format_info
    res = info(path)
    click.echo(json.dumps(res) if as_json else format_info(res))


@cache.command("verify")
@click.argument("path")
@click.option("--teacher", default=None,
              help="Teacher: a checkpoint, an entry point ('{entry_point: pkg.mod:load, args: {...}}') or a Hugging "
                   "Face model ('{huggingface: DIR or owner/name from the local HF cache}'), as inline YAML; "
                   "default: the vocabulary_map and alignment options the cache recorded. Recompute a sample and "
                   "compare with the cache.")
@click.option("--sample", default=32, show_default=True, help="Utterances per split to recompute.")
@click.option("--device", default="auto", show_default=True, help="Device for the teacher.")
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="Corpus for --teacher (default: the one the cache's sealed metadata names).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_friendly
def cache_verify(path, teacher, sample, device, corpus, as_json):
    """Completeness, checksums and shapes; with --teacher, fidelity of the cached outputs."""
    from offline_kd.cache.verify import format_verify
    from offline_kd.distillation.fidelity import verify_with_teacher
    res = verify_with_teacher(path, teacher, sample, device, log=_log, corpus=corpus)
    click.echo(json.dumps(res) if as_json else format_verify(res))
    if not res["ok"]:
        sys.exit(1)


# ------------------------------------------------------------------------------------------- shipped configs
@main.group("config")
def config_group():
    """The configs that ship with offline-kd: any --config takes their name (e.g. --config demo/distill)."""


@config_group.command("list")
def config_list():
    """Name and file of every shipped config."""
    from offline_kd.config import shipped_configs
    for name, path in shipped_configs().items():
        click.echo(f"{name}\t{path}")


@config_group.command("show")
@click.argument("name")
@_friendly
def config_show(name):
    """Print a shipped config (copy it to change it: offline-kd config show demo/distill > mine.yaml)."""
    from offline_kd.config import resolve_config_path
    click.echo(resolve_config_path(name).read_text(), nl=False)


if __name__ == "__main__":
    main()
