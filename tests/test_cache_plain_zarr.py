"""The documented layout (docs/cache-format.md) is readable with plain zarr + numpy: this module does not import
offline_kd; the cache is written by the CLI in a subprocess and compared with the live teacher's outputs that a
second subprocess saved with numpy. The recipe is executed from the doc itself, so doc and code cannot drift."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import CODECS


def _dump(tmp_path, teacher, corpus, log_probs, hidden, **codecs):
    name = "-".join([log_probs, hidden, *map(str, codecs.values())])
    out = tmp_path / f"{name}.zarr"
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"dump": {
        "teacher": str(teacher), "corpus": str(corpus), "output": str(out), "splits": ["dev"], "layers": [1, 3],
        "batch_size": 8, "progress": False, "device": "cpu",
        "codecs": {"log_probs": log_probs, "topk_k": 4, "hidden": hidden, **codecs}}}))
    subprocess.run([sys.executable, "-m", "offline_kd", "dump-teacher", "--config", str(cfg)], check=True,
                   capture_output=True)
    return out


def _live(tmp_path, teacher, corpus):
    """The live teacher's log-probs and layer-3 states per utterance, saved to .npz by a subprocess."""
    script = f"""
import numpy as np, torch
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.data.corpus import Corpus
m, _, _ = model_from_checkpoint({str(teacher)!r})
r = Corpus({str(corpus)!r}).split("dev")
out = {{}}
with torch.no_grad():
    for i, u in enumerate(r.utterance_ids):
        x = torch.from_numpy(r.features(i))[None]
        lp, n, h = m.forward_with_hidden_states(x, torch.tensor([x.shape[1]]), [3])
        out[u + "/lp"] = lp[:, 0].numpy(); out[u + "/h3"] = h[3][0].numpy()
np.savez({str(tmp_path / 'live.npz')!r}, **out)
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    return np.load(tmp_path / "live.npz")


DOC = Path(__file__).resolve().parents[1] / "docs" / "cache-format.md"
HEAD = 'CACHE, SPLIT, UTTERANCE, LAYER = "cache/teacher.zarr", "train", "train-000042-spk003", 4'


def _doc_recipe() -> str:
    """The python block of docs/cache-format.md's "Reading a cached utterance with plain zarr", as it stands."""
    text = DOC.read_text()
    section = text[text.index("## Reading a cached utterance with plain zarr"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    assert HEAD in code, "the recipe's first line changed: update HEAD here"
    return code


def _read_utterance(path, utt, split="dev", layer=3):
    """Run the documented recipe (nothing but zarr and numpy) on one utterance."""
    ns: dict = {}
    exec(_doc_recipe().replace(HEAD, f"CACHE, SPLIT, UTTERANCE, LAYER = {str(path)!r}, {split!r}, {utt!r}, {layer}"),
         ns)
    return ns["log_probs"], ns["hidden"], ns["best_path"], ns["meta"]


@pytest.mark.slow
def test_plain_zarr_reads_the_documented_layout(tiny_teacher, tiny_corpus, tmp_path):
    live = _live(tmp_path, tiny_teacher, tiny_corpus)
    utts = sorted({k.split("/")[0] for k in live.files})
    exact = _dump(tmp_path, tiny_teacher, tiny_corpus, "float32", "float32")
    compact = _dump(tmp_path, tiny_teacher, tiny_corpus, "topk", "int8")
    # the lowrank-tail top-k and low-rank hidden states at full rank: close to exact through the documented recipe
    fitted = _dump(tmp_path, tiny_teacher, tiny_corpus, "topk", "lowrank", topk_coverage=0.99, topk_tail="lowrank",
                   logits_rank=8, lowrank_rank=64, lowrank_coeff="int8", lowrank_fit_frames=300)
    pure = _dump(tmp_path, tiny_teacher, tiny_corpus, "lowrank", "lowrank", logits_rank=8, logits_coeff="float16",
                 lowrank_rank=64, lowrank_fit_frames=300)
    stepped = _dump(tmp_path, tiny_teacher, tiny_corpus, "topk", "lowrank", topk_coverage=0.99, topk_tail="lowrank",
                    logits_rank=8, lowrank_rank=64, lowrank_coeff="step", lowrank_target_error=0.01,
                    lowrank_fit_frames=300)
    for u in utts:
        lp, h, path, meta = _read_utterance(exact, u)
        assert meta["format_version"] == 2 and meta["layers"] == {"1": 64, "3": 64}
        np.testing.assert_allclose(lp, live[u + "/lp"], atol=1e-5)
        np.testing.assert_allclose(h, live[u + "/h3"], atol=1e-5)
        np.testing.assert_array_equal(path, live[u + "/lp"].argmax(-1))
        lp2, h2, _, meta2 = _read_utterance(compact, u)
        assert meta2["codecs"]["log_probs"]["name"] == "topk"
        np.testing.assert_allclose(np.exp(lp2).sum(-1), 1.0, atol=1e-2)
        np.testing.assert_array_equal(lp2.argmax(-1), live[u + "/lp"].argmax(-1))
        np.testing.assert_allclose(h2, live[u + "/h3"], atol=0.01)
        for path, h_tol in ((fitted, 0.03), (pure, 0.01), (stepped, None)):
            lp3, h3, _, _ = _read_utterance(path, u)
            ref = live[u + "/lp"].astype(np.float64)
            np.testing.assert_allclose(np.exp(lp3).sum(-1), 1.0, atol=1e-3)   # fp16 head values
            assert (np.exp(ref) * (ref - lp3)).sum(-1).max() < 1e-3          # KL(live || decoded) per frame
            np.testing.assert_array_equal(lp3.argmax(-1), ref.argmax(-1))
            if h_tol is None:                                                  # fitted for a 1% squared error
                assert ((h3 - live[u + "/h3"]) ** 2).sum() / (live[u + "/h3"] ** 2).sum() < 0.03
            else:
                np.testing.assert_allclose(h3, live[u + "/h3"], atol=h_tol)
    assert json.dumps(meta["dump_config"])   # the resolved dump config is stored


@pytest.mark.parametrize("name", list(CODECS))
def test_the_doc_recipe_decodes_every_codec_like_offline_kd(name, tiny_teacher, tiny_corpus, tmp_path):
    from offline_kd.cache.reader import TeacherCache
    from offline_kd.config import DumpConfig, build_dataclass
    from offline_kd.commands import dump_teacher
    out = tmp_path / "c.zarr"
    dump_teacher.run(build_dataclass(DumpConfig, {
        "teacher": str(tiny_teacher), "corpus": str(tiny_corpus), "output": str(out), "splits": ["dev"],
        "layers": [1, 3], "batch_size": 8, "progress": False, "device": "cpu", "codecs": CODECS[name]}),
        log=lambda *_: None)
    split = TeacherCache(str(out)).split("dev")
    for p in range(0, len(split), 5):
        want = split.read(p)
        lp, h, path, meta = _read_utterance(out, split.utterance_ids[p])
        assert meta["codecs"]["log_probs"]["name"] == CODECS[name]["log_probs"]
        np.testing.assert_array_equal(np.isneginf(lp), np.isneginf(want["log_probs"]))
        finite = np.isfinite(want["log_probs"])
        np.testing.assert_allclose(lp[finite], want["log_probs"][finite], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(h, want["hidden"][3], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(path, want["best_path"])
