"""The wav2vec2-family student (`model.type: hf`, models/hf.py): it reads the corpus's kept audio, its frames line
up with a cache dumped at 2x, it trains CTC-only (`train`) and from a cache (`train-student`, hidden-state terms
included), a checkpoint rebuilds it without the directory it was initialised from, it transcribes a WAV file, and
`init_from` copies a Hugging Face teacher's feature encoder and first layers. Tiny models, nothing downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, step_records
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train, train_student
from offline_kd.config import ExperimentConfig, ModelConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.errors import OfflineKDError
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.models.interface import build_model
from test_audio_import import nemo_corpus, run
from test_hf_teacher import save_tiny

transformers = pytest.importorskip("transformers")

SMALL = {"conv_dim": [8] * 7, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2,
         "mask_time_prob": 0.0}
STUDENT = {"type": "hf", "input_dim": 80, "hidden_dim": 16, "num_layers": 2, "num_classes": 4, "dropout": 0.0,
           "num_heads": 2, "hf_config": SMALL}


@pytest.fixture(scope="module")
def audio_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_student")
    m = nemo_corpus(d, n=10)
    code, out = run("--manifest", m, "--out", d / "corpus", "--keep-audio", "--cmvn", "utterance")
    assert code == 0, out
    return d / "corpus"


@pytest.fixture(scope="module")
def hf_cache(audio_corpus, tmp_path_factory):
    """A tiny Hugging Face teacher's cache of the corpus (2x: 20 ms frames, as the student's)."""
    d = tmp_path_factory.mktemp("teacher")
    teacher = save_tiny(d / "hubert", "hubert")
    out = d / "c.zarr"
    dump_teacher.run(dump_cfg({"huggingface": str(teacher)}, audio_corpus, out, layers=[1, 2], max_dropped_mass=1.0,
                              splits=["train", "dev"]), **QUIET)
    return teacher, out


def experiment(corpus, out, model=None, **distill) -> ExperimentConfig:
    d = {"data": {"corpus": str(corpus), "batch_size": 4, "num_buckets": 1},
         "model": {**STUDENT, **(model or {})},
         "train": {"epochs": 2, "lr": 0.003, "output_dir": str(out), "progress": False, "log_every": 1, "seed": 0}}
    if distill:
        d["distill"] = distill
    return build_dataclass(ExperimentConfig, d)


def test_its_frames_line_up_with_the_features_at_2x(audio_corpus):
    split = Corpus(audio_corpus).split("train")
    m = build_model(ModelConfig(**STUDENT)).eval()
    for i in range(len(split)):
        n = len(split.audio(i))
        assert int(m.output_lengths(torch.tensor([n]))) == -(-int(split.lengths[i]) // 2)


def test_train_and_train_student_from_the_cache(audio_corpus, hf_cache, tmp_path):
    teacher, cache = hf_cache
    train.run(experiment(audio_corpus, tmp_path / "ctc"), **QUIET)
    assert (tmp_path / "ctc" / "checkpoint_best.pt").is_file()
    cfg = experiment(audio_corpus, tmp_path / "kd", cache=str(cache), alpha=0.5, beta=0.5, gamma=0.2,
                     layer_mapping={1: 1, 2: 2}, temperature_schedule=[[1, 1.0]])
    train_student.run(cfg, **QUIET)
    steps = step_records(tmp_path / "kd")
    assert steps and all(np.isfinite(s["train/feature"]) and s["train/feature"] > 0 for s in steps)
    # a 40 ms cache of the same teacher is refused for the 20 ms student, naming the dump that fits it
    at4 = tmp_path / "at4.zarr"
    dump_teacher.run(dump_cfg({"huggingface": str(teacher)}, audio_corpus, at4, layers=[1, 2], max_dropped_mass=1.0,
                              splits=["train", "dev"], subsampling=4), **QUIET)
    with pytest.raises(OfflineKDError, match=r"dump a cache at the student's rate \(dump.subsampling=2\)"):
        train_student.run(experiment(audio_corpus, tmp_path / "kd4", cache=str(at4)), **QUIET)
    model, vocab, _ = model_from_checkpoint(tmp_path / "kd" / "checkpoint_best.pt")
    assert model.model_type == "hf" and model.config.init_from is None and model.summary().startswith("wav2vec2")
    again = build_model(ModelConfig(**model.describe()))          # the description alone rebuilds it
    assert again.describe() == model.describe()


def test_it_transcribes_a_wav_file(audio_corpus, tmp_path):
    from offline_kd.api import load_model
    train.run(experiment(audio_corpus, tmp_path / "ctc"), **QUIET)
    speech = load_model(tmp_path / "ctc" / "checkpoint_best.pt")
    wav = audio_corpus.parent / "wav" / "u0.wav"
    split = Corpus(audio_corpus).split("train")
    got = speech.log_probs([str(wav)])[0]
    assert got.shape == (-(-int(split.lengths[0]) // 2), 4)
    kept = speech.log_probs([split.audio(0)], sample_rate=16000)[0]       # the kept int16 samples: the same input
    np.testing.assert_allclose(got, kept, atol=1e-5)
    # the CLI: a WAV file, a folder with two jobs, and a corpus split (its kept audio) give the same texts
    texts = {}
    for name, args in (("file", [wav]), ("jobs", [wav, "--jobs", "2"]),
                       ("split", ["--corpus", audio_corpus, "--split", "train"])):
        res = CliRunner().invoke(main, ["transcribe", str(tmp_path / "ctc" / "checkpoint_best.pt"), *map(str, args),
                                        "--format", "jsonl", "--no-progress"])
        assert res.exit_code == 0, res.output
        texts[name] = {r["id"]: r["text"] for r in map(json.loads, [ln for ln in res.output.splitlines()
                                                                           if ln.startswith("{")])}
    assert texts["file"] == texts["jobs"] and texts["split"]["u0"] == speech.transcribe([str(wav)])[0]
    # a corpus split is transcribed from its kept samples, which are the WAV file's
    from offline_kd.inference.job import _feature_batches
    (batch,) = list(_feature_batches(speech, [None], [[0]], split, 1))
    np.testing.assert_array_equal(batch[0], split.audio(0).astype(np.float32) / 32768.0)
    np.testing.assert_allclose(speech.forward_features(batch)[0], got, atol=1e-5)


def test_init_from_copies_the_teachers_encoder_and_first_layers(tmp_path):
    teacher = save_tiny(tmp_path / "w", "hubert")
    m = build_model(ModelConfig(type="hf", input_dim=80, hidden_dim=16, num_layers=1, num_classes=4, dropout=0.0,
                                init_from=str(teacher)))
    t = transformers.HubertForCTC.from_pretrained(str(teacher)).eval()
    mine, theirs = m.encoder.state_dict(), t.hubert.state_dict()
    want = {k for k in theirs if k in mine}          # everything but layer 1 (the student has one layer)
    assert not any(k.startswith("encoder.layers.1.") for k in want)
    assert set(m.copied_names) == want and any("pos_conv_embed" in k for k in want)
    assert {k.split(".")[0] for k in want} >= {"feature_extractor", "feature_projection", "encoder"}
    for name in want:
        torch.testing.assert_close(mine[name], theirs[name])
    assert m.copied == len(want) and m.config.hf_family == "hubert" and m.config.num_heads == 2
    assert "init_from" not in m.describe() and m.describe()["hf_config"]["hidden_size"] == 16
    with pytest.raises(OfflineKDError, match="model.hidden_dim: 32 differs from model.init_from's hidden size "
                                             r"\(16 in .*\); the student keeps the teacher's width: set "
                                             "model.hidden_dim=16"):
        build_model(ModelConfig(type="hf", hidden_dim=32, num_layers=1, num_classes=4, init_from=str(teacher)))
    with pytest.raises(OfflineKDError, match="has only 2 layers to copy"):
        build_model(ModelConfig(type="hf", hidden_dim=16, num_layers=3, num_classes=4, init_from=str(teacher)))


def test_mistakes_are_one_line_errors(audio_corpus, tmp_path):
    features_only = tmp_path / "features_only"
    assert run("--manifest", audio_corpus.parent / "manifest.json", "--out", features_only)[0] == 0
    with pytest.raises(OfflineKDError, match="reads waveforms and split 'train' keeps no audio; import the corpus "
                                             "with `data import --keep-audio`"):
        train.run(experiment(features_only, tmp_path / "x"), **QUIET)
    assert not (tmp_path / "x").exists()
    with pytest.raises(OfflineKDError, match="model.subsampling 3: the model's frames are 320 samples and the "
                                             "corpus's feature frames 160, so its frames are 2 feature frames; set "
                                             "model.subsampling=2"):
        train.run(experiment(audio_corpus, tmp_path / "s3", model={"subsampling": 3}), **QUIET)
    assert not (tmp_path / "s3").exists()
    with pytest.raises(OfflineKDError, match="model.hf_config.hidden_size: 8 contradicts"):
        build_model(ModelConfig(**{**STUDENT, "hf_config": {**SMALL, "hidden_size": 8}}))
    with pytest.raises(OfflineKDError, match="model.subsampling 3: an utterance of"):
        m = build_model(ModelConfig(**{**STUDENT, "subsampling": 3})).eval()
        m.forward_with_hidden_states(torch.zeros(1, 16000), torch.tensor([16000]), None,
                                     num_frames=torch.tensor([98]))
    with pytest.raises(OfflineKDError, match="model.init_from is a setting of model.type hf"):
        ModelConfig(type="bilstm", init_from="x")
    json.dumps(build_model(ModelConfig(**STUDENT)).describe())       # a description is plain JSON


def test_a_group_norm_encoder_runs_one_utterance_at_a_time_outside_training():
    """wav2vec2-base's feature encoder normalises over time: evaluated batched it would see its batch-mates'
    padding, so outside training each utterance runs alone and its outputs do not depend on the batch."""
    m = build_model(ModelConfig(**{**STUDENT, "hf_config": {**SMALL, "feat_extract_norm": "group",
                                                             "do_stable_layer_norm": False}})).eval()
    assert not m.batched
    g = torch.Generator().manual_seed(0)
    a, b = 0.1 * torch.randn(1, 4000, generator=g), 0.1 * torch.randn(1, 9000, generator=g)
    alone = m(a, torch.tensor([4000]))[0]
    batch = torch.zeros(2, 9000)
    batch[0, :4000], batch[1] = a[0], b[0]
    both, n = m(batch, torch.tensor([4000, 9000]))
    torch.testing.assert_close(both[: int(n[0]), 0], alone[:, 0])


def test_an_hf_checkpoint_is_evaluated_and_serves_as_a_teacher(audio_corpus, tmp_path):
    """`evaluate` reads the kept audio of the split it scores; `dump-teacher` takes an hf checkpoint as any teacher
    (it reads waveforms: its frames are lined up with the features as a Hugging Face teacher's are)."""
    train.run(experiment(audio_corpus, tmp_path / "t"), **QUIET)
    ckpt = tmp_path / "t" / "checkpoint_best.pt"
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--corpus", str(audio_corpus),
                                    "--split", "dev", "--json"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(str(ckpt), audio_corpus, out, layers=[1, 2], splits=["train"]), **QUIET)
    from offline_kd.cache.reader import TeacherCache
    split = TeacherCache(str(out)).split("train")
    reader = Corpus(audio_corpus).split("train")
    model, _, _ = model_from_checkpoint(ckpt)
    u = split.utterance_ids[0]
    i = reader.index[u]
    lp = model.eval()(torch.from_numpy(reader.audio(i)[None].astype(np.float32) / 32768.0),
                      torch.tensor([len(reader.audio(i))]))[0][:, 0].detach().numpy()
    np.testing.assert_allclose(split.read(split.position[u])["log_probs"], lp, atol=2e-3)


def test_init_from_reads_weights_saved_with_the_old_weight_norm_names(tmp_path):
    """Checkpoints on the Hub often keep the positional convolution as weight_g / weight_v (weight normalisation's
    old names); they are copied as this transformers version's parametrization. A directory whose feature encoder
    does not fit the student is refused, naming the first tensor it lacks."""
    from safetensors.torch import load_file, save_file
    teacher = save_tiny(tmp_path / "w", "hubert")
    f = teacher / "model.safetensors"
    old = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                             "weight_v"): v
           for k, v in load_file(str(f)).items()}
    assert any(k.endswith("weight_g") for k in old)
    save_file(old, str(f))
    m = build_model(ModelConfig(type="hf", input_dim=80, hidden_dim=16, num_layers=2, num_classes=4, dropout=0.0,
                                init_from=str(teacher)))
    got = m.encoder.state_dict()
    for k, v in old.items():
        if k.endswith(("weight_g", "weight_v")):
            name = k.removeprefix("hubert.").replace("weight_g", "parametrizations.weight.original0").replace(
                "weight_v", "parametrizations.weight.original1")
            torch.testing.assert_close(got[name], v)
    with pytest.raises(OfflineKDError, match="tensors to copy have no counterpart of the same name and shape"):
        build_model(ModelConfig(type="hf", input_dim=80, hidden_dim=16, num_layers=2, num_classes=4,
                                init_from=str(teacher), hf_config={"conv_dim": [4] * 7}))


def test_feature_augmentation_and_unknown_transformers_keys_are_refused(audio_corpus, tmp_path):
    cfg = experiment(audio_corpus, tmp_path / "a")
    cfg = build_dataclass(ExperimentConfig, {**_as_dict(cfg), "augment": {"time_masks": 2}})
    with pytest.raises(OfflineKDError, match="augment.time_masks acts on features; model.type hf reads waveforms"):
        train.run(cfg, **QUIET)
    assert not (tmp_path / "a").exists()
    with pytest.raises(OfflineKDError, match="model.hf_config.mask_time_prop: not a key of transformers' "
                                             "Wav2Vec2Config"):
        build_model(ModelConfig(**{**STUDENT, "hf_config": {**SMALL, "mask_time_prop": 0.1}}))
    with pytest.raises(OfflineKDError, match="model.hf_config.layerdrop: the student keeps every layer"):
        build_model(ModelConfig(**{**STUDENT, "hf_config": {**SMALL, "layerdrop": 0.1}}))


def test_distill_init_checkpoint_takes_an_hf_checkpoint(audio_corpus, hf_cache, tmp_path):
    """distill.init_checkpoint compares the models as built (an hf checkpoint holds the resolved transformers
    config, the run's config does not)."""
    _, cache = hf_cache
    train.run(experiment(audio_corpus, tmp_path / "ctc"), **QUIET)
    cfg = experiment(audio_corpus, tmp_path / "kd", cache=str(cache), alpha=0.5, beta=0.5, gamma=0.0,
                     init_checkpoint=str(tmp_path / "ctc" / "checkpoint_best.pt"), temperature_schedule=[[1, 1.0]])
    train_student.run(cfg, **QUIET)
    with pytest.raises(OfflineKDError, match="its model config differs from 'model'"):
        train_student.run(experiment(audio_corpus, tmp_path / "kd2", model={"num_heads": 4}, cache=str(cache),
                                     gamma=0.0, init_checkpoint=str(tmp_path / "ctc" / "checkpoint_best.pt")),
                          **QUIET)


def _as_dict(cfg) -> dict:
    from dataclasses import asdict
    return {k: v for k, v in asdict(cfg).items()}


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_it_exports_to_onnx_and_torchscript_checked_against_pytorch(audio_corpus, tmp_path, norm):
    """The export reads samples in [-1, 1) (the graph normalises them as the model does); onnxruntime's log-probs
    match PyTorch's on the corpus's kept audio. A group-norm encoder's graph takes one utterance at a time."""
    import onnxruntime as ort
    from offline_kd.api import load_model
    from offline_kd.inference.export import export_model
    hf = {**SMALL, "feat_extract_norm": norm, "do_stable_layer_norm": norm == "layer"}
    train.run(experiment(audio_corpus, tmp_path / "m", model={"hf_config": hf}), **QUIET)
    ckpt = tmp_path / "m" / "checkpoint_best.pt"
    res = export_model(str(ckpt), str(tmp_path / "onnx"), int8=True, log=lambda *_: None)
    assert res.check["fp32"]["max_abs_diff"] < 1e-3 and res.check["source"].endswith("(audio)")
    assert set(res.files) == {"onnx", "int8", "tokens"} and not res.sherpa
    assert not (tmp_path / "onnx" / "sherpa-onnx.json").exists()
    assert json.loads((tmp_path / "onnx" / "frontend.json").read_text())["input"].startswith("samples (N, S)")
    # a WAV file through onnxruntime gives transcribe's log-probs
    wav = audio_corpus.parent / "wav" / "u0.wav"
    speech = load_model(ckpt)
    want = speech.log_probs([str(wav)])[0]
    samples = Corpus(audio_corpus).split("train").audio(0).astype(np.float32) / 32768.0     # the WAV's samples
    sess = ort.InferenceSession(res.files["onnx"], providers=["CPUExecutionProvider"])
    lp, n = sess.run(None, {"samples": samples[None], "samples_lens": np.array([len(samples)], dtype=np.int64)})
    np.testing.assert_allclose(lp[0, :int(n[0])], want, atol=1e-3)
    padded = np.concatenate([samples, np.zeros(5000, dtype=np.float32)])[None]     # padding changes nothing
    lp, n = sess.run(None, {"samples": padded, "samples_lens": np.array([len(samples)], dtype=np.int64)})
    np.testing.assert_allclose(lp[0, :int(n[0])], want, atol=1e-3)
    batch_axis = sess.get_inputs()[0].shape[0]
    assert (batch_axis == 1) == (norm == "group")
    ts = export_model(str(ckpt), str(tmp_path / "ts"), fmt="torchscript", log=lambda *_: None)
    assert ts.check["torchscript"]["max_abs_diff"] < 1e-3
    module = torch.jit.load(ts.files["torchscript"])
    lp, n = module(torch.from_numpy(padded), torch.tensor([len(samples)]))
    np.testing.assert_allclose(lp[0, :int(n[0])].detach().numpy(), want, atol=1e-3)
