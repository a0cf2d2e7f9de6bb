"""A teacher that lives in your own code, brought to offline-kd through an entry point.

`SeedBiLSTM` stands for a research group's own model (here: a BiLSTM CTC model like the seed's
`src/models/bilstm.py`, written without any offline-kd class): a linear front end, 2x subsampling by averaging the
valid frames of each pair, bidirectional LSTMs, a linear CTC head. Its `forward_with_hidden_states` already has the
signature offline-kd reads. `load(...)` is the entry point: it builds the model from its own weight file and
returns it with the few members offline-kd needs (`tokens`, `blank`, `input_dim`, `subsampling`, `layer_dims()`).

    dump:
      teacher:
        entry_point: my_teacher:load            # this file on PYTHONPATH (e.g. PYTHONPATH=examples/own_teacher)
        args: {weights: my_model.pt, tokens: tokens.txt, input_dim: 80, hidden: 256, layers: 4}

`python my_teacher.py --from-offline-kd CHECKPOINT --out DIR` writes such a weight file and tokens file from an
offline-kd checkpoint (same weights, this model's own parameter names): the cache dumped through `load` is then
bit for bit the cache of the checkpoint itself (tests/test_teachers.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


class SeedBiLSTM(nn.Module):
    def __init__(self, input_dim: int, hidden: int, layers: int, num_classes: int, subsampling: int = 2):
        super().__init__()
        self.subsampling = subsampling
        self.frontend = nn.Linear(input_dim, hidden)
        self.encoder = nn.ModuleList(nn.LSTM(hidden if i == 0 else 2 * hidden, hidden, batch_first=True,
                                             bidirectional=True) for i in range(layers))
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def _pool(self, x, lengths):
        s = self.subsampling
        out_len = (lengths + s - 1) // s
        if s == 1:
            return x, out_len
        b, t, h = x.shape
        mask = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        pad = (-t) % s
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))
            mask = nn.functional.pad(mask, (0, pad))
        total = (x * mask[..., None]).view(b, -1, s, h).sum(2)
        count = mask.view(b, -1, s).sum(2).clamp_min(1.0)
        return total / count[..., None], out_len

    def forward_with_hidden_states(self, x, lengths, return_layer_indices=None):
        """x (B, T, D), lengths (B,) -> log_probs (T', B, V), output lengths (B,), {layer: (B, T', 2H)}."""
        wanted = set(return_layer_indices or [])
        y, out_len = self._pool(self.frontend(x), lengths)
        t_out = y.shape[1]
        packed = pack_padded_sequence(y, out_len.cpu(), batch_first=True, enforce_sorted=False)
        hidden = {}
        for i, lstm in enumerate(self.encoder, start=1):
            packed, _ = lstm(packed)
            if i in wanted:
                hidden[i] = pad_packed_sequence(packed, batch_first=True, total_length=t_out)[0]
            packed = PackedSequence(packed.data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        y = pad_packed_sequence(packed, batch_first=True, total_length=t_out)[0]
        return self.classifier(y).log_softmax(-1).transpose(0, 1), out_len, hidden


def load(weights: str, tokens: str, input_dim: int, hidden: int, layers: int, subsampling: int = 2) -> SeedBiLSTM:
    """The entry point: the model with its weights, and the members offline-kd reads."""
    vocab = Path(tokens).read_text(encoding="utf-8").splitlines()
    model = SeedBiLSTM(input_dim, hidden, layers, len(vocab), subsampling)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.tokens = vocab                     # class i is vocab[i]
    model.blank = 0
    model.input_dim = input_dim
    model.layer_dims = lambda: {i: 2 * hidden for i in range(1, layers + 1)}
    return model.eval()


RENAME = {"input_proj.": "frontend.", "lstms.": "encoder.", "output_proj.": "classifier."}


def from_offline_kd(checkpoint: str, out: str) -> dict:
    """Write `weights.pt` and `tokens.txt` for `load` from an offline-kd checkpoint; returns load's arguments."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = {}
    for name, t in ckpt["model_state_dict"].items():
        for old, new in RENAME.items():
            if name.startswith(old):
                name = new + name[len(old):]
        state[name] = t
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / "weights.pt")
    (d / "tokens.txt").write_text("\n".join(ckpt["vocab"]["tokens"]) + "\n", encoding="utf-8")
    cfg = ckpt["model_config"]
    return {"weights": str(d / "weights.pt"), "tokens": str(d / "tokens.txt"), "input_dim": cfg["input_dim"],
            "hidden": cfg["hidden_dim"], "layers": cfg["num_layers"], "subsampling": cfg["subsampling"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write load()'s weight and tokens files from an offline-kd checkpoint.")
    ap.add_argument("--from-offline-kd", required=True, metavar="CHECKPOINT")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    print(from_offline_kd(a.from_offline_kd, a.out))
