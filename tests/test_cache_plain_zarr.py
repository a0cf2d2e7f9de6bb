"""The documented layout (docs/cache-format.md) is readable with plain zarr + numpy: this module does not import
offline_kd; the cache is written by the CLI in a subprocess and compared with the live teacher's outputs that a
second subprocess saved with numpy."""

import json
import subprocess
import sys

import numpy as np
import yaml
import zarr


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
from offline_kd.training.checkpoint import model_from_checkpoint
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


def _read_utterance(path, utt):
    """The recipe from docs/cache-format.md."""
    root = zarr.open_group(str(path), mode="r")
    meta = root.attrs["offline_kd"]
    assert meta["complete"]
    split = root["dev"]
    ids = list(split["utterance_id"][:])
    i = ids.index(utt)
    a, b = split["offset"][i], split["offset"][i + 1]
    v = meta["num_classes"]

    def lse(z):
        m = z.max(-1, keepdims=True)
        return m + np.log(np.exp(z - m).sum(-1, keepdims=True))

    def lowrank(prefix, state):
        g = root[state]
        basis, mean = g["basis"][:], g["mean"][:]
        if prefix + "coeffs" in split:
            c = split[prefix + "coeffs"][a:b].astype(np.float32)
        elif prefix + "codes" in split:
            c = split[prefix + "codes"][a:b] * g["step"][0]
        else:
            whiten = g["scale"][:] if "scale" in g else np.ones(len(basis), np.float32)
            c = split[prefix + "q"][a:b] * split[prefix + "scale"][a:b][:, None] * whiten
        return c @ basis + mean

    codec = meta["codecs"]["log_probs"]
    if codec["name"] in ("float32", "float16"):
        log_probs = split["log_probs"][a:b].astype(np.float32)
    elif codec["name"] == "lowrank":
        z = lowrank("log_probs/", "lowrank/log_probs")
        log_probs = z - lse(z)
    else:
        values = split["log_probs/values"][a:b].astype(np.float32)
        indices = split["log_probs/indices"][a:b].astype(np.int64)
        count = split["log_probs/count"][a:b].astype(np.int64)
        tail = split["log_probs/tail_log_mass"][a:b][:, None]
        if codec["tail"] == "lowrank":
            log_probs = lowrank("log_probs/tail_", "lowrank/log_probs")
            for t in range(b - a):
                log_probs[t, indices[t, :count[t]]] = -np.inf
            log_probs = log_probs - lse(log_probs) + tail
        else:
            log_probs = np.repeat(tail - np.log(v - count)[:, None], v, axis=1)
        for t in range(b - a):
            log_probs[t, indices[t, :count[t]]] = values[t, :count[t]]
    hc = meta["codecs"]["hidden"]["3"]
    if hc["name"] in ("float32", "float16"):
        hidden = split["hidden_3"][a:b].astype(np.float32)
    elif hc["name"] == "int8":
        hidden = split["hidden_3/q"][a:b] * split["hidden_3/scale"][a:b][:, None]
    else:
        hidden = lowrank("hidden_3/", "lowrank/hidden_3")
    best_path = split["best_path"][a:b]
    return log_probs, hidden, best_path, meta


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
        assert meta["format_version"] == 1 and meta["layers"] == {"1": 64, "3": 64}
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
