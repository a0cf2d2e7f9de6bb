"""Several teachers as one: `dump.teacher: [A, B, C]` (uniform weights) or `{ensemble: [A, B, C], weights:
dev_wer}`, each member any teacher spec; their posteriors combined frame by frame into one cache. The same spec
serves `cache verify --teacher` and `train-student --online-teacher`.

Each member is loaded as a single teacher is (any source, aligned onto the student's vocabulary and frame rate),
so every member gives log-probs over the student's classes on the same ceil(T / subsampling) frames. The ensemble's
log-probs are the weighted mean of the members' probabilities,

    log p(c | t) = log sum_i w_i p_i(c | t),   sum_i w_i = 1,

which is still a distribution (a mean in log space, a product of experts, would need renormalising and sharpens
where members disagree; the mean keeps their disagreement as uncertainty, which is what the student's KL term and
the stored confidence should see). Weights (`weights`): `uniform` (1/N each), `dev_wer` (each
member's weight proportional to 1 / its recorded dev WER: checkpoints record it; a member without one is refused),
or a list of N non-negative numbers (normalised). Hidden states are the first member's (the layers `dump.layers`
names are its layers).

Each member's confidence is kept too: beside the hidden states the ensemble gives `MEMBER_PROBS`, (B, T', N) each
member's posterior of the combined greedy token at every frame, which the dump stores as the per-frame field
`member_probs` (float16) and reduces, before the seal, to `{split}/member_confidence` (U, N): each member's
confidence in the cached 1-best, by the rule of the stored confidence (cache/confidence.py). `cache info` prints
its median per member. The cache records every member, the weights and the combination; its identity covers them,
so a changed list or weight never resumes an old dump.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Optional, Sequence

import torch
from torch import nn

from offline_kd.errors import OfflineKDError
from offline_kd.models.interface import forward_batch, reads_waveform

COMBINE = "weighted mean of the members' probabilities"
MEMBER_PROBS = "member_probs"      # the per-frame field (and the key beside the hidden layers) of each member's
#                                    posterior of the combined greedy token


def member_field_spec(n: int) -> dict:
    """The per-frame field an ensemble of `n` teachers adds to its cache (cache/fields.py's {name, dtype, shape})."""
    return {"name": MEMBER_PROBS, "dtype": "float16", "shape": [int(n)]}


class EnsembleTeacher(nn.Module):
    """Members (CTCModels in the student's vocabulary and frames) seen as one teacher; see the module docstring."""

    model_type = "ensemble"

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], where: str = "dump.teacher",
                 feature_dim: Optional[int] = None):
        super().__init__()
        for i, m in enumerate(members):     # every member that reads features reads the corpus's
            if feature_dim is not None and not reads_waveform(m) and int(m.input_dim) != int(feature_dim):
                raise OfflineKDError(f"{where}[{i}] reads {m.input_dim}-dim features and the corpus has "
                                     f"{feature_dim}-dim ones")
        self.members = nn.ModuleList(members)
        rates = {int(m.subsampling) for m in members}
        classes = {int(m.num_classes) for m in members}
        if len(rates) > 1:
            raise OfflineKDError(f"{where}: the teachers give frames every {sorted(rates)} feature frames; set "
                                 f"dump.subsampling (the student's rate) so that each is aligned onto it")
        if len(classes) > 1:
            raise OfflineKDError(f"{where}: the teachers give {sorted(classes)} classes; they must share the "
                                 f"student's vocabulary")
        self.register_buffer("log_weights", torch.tensor([math.log(w) if w > 0 else -math.inf for w in weights]),
                             persistent=False)
        self.weights = [float(w) for w in weights]
        # a member that reads waveforms needs the batch's samples: the loader then reads them (`reads_waveform`)
        self.input_kind = "waveform" if any(reads_waveform(m) for m in members) else "features"
        self.sample_rate = next((m.sample_rate for m in members if reads_waveform(m)), None)

    # ----------------------------------------------------------------------------------- the protocol
    @property
    def first(self) -> nn.Module:
        return self.members[0]

    @property
    def input_dim(self) -> int:
        return self.first.input_dim

    @property
    def input_dim_key(self) -> str:
        return "dump.teacher[0]'s input_dim"

    @property
    def num_classes(self) -> int:
        return self.first.num_classes

    @property
    def blank(self) -> int:
        return self.first.blank

    @property
    def subsampling(self) -> int:
        return self.first.subsampling

    @property
    def num_layers(self) -> int:
        return self.first.num_layers

    def layer_dims(self) -> dict[int, int]:
        return self.first.layer_dims()

    def describe(self) -> dict:
        return {"ensemble": [m.describe() for m in self.members], "weights": self.weights, "combine": COMBINE}

    def forward_batch(self, batch: dict, device: torch.device, layers=None):
        """Every member on the collated batch (its features, or its samples for a member that reads waveforms)."""
        return self._combine([forward_batch(m, batch, device, layers if i == 0 else None)
                              for i, m in enumerate(self.members)])

    def forward_with_hidden_states(self, x: torch.Tensor, lengths: torch.Tensor, return_layer_indices=None,
                                   num_frames: Optional[torch.Tensor] = None):
        if self.input_kind == "waveform":
            raise OfflineKDError("an ensemble with a teacher that reads waveforms is called on whole batches "
                                 "(forward_batch)")
        return self._combine([m.forward_with_hidden_states(x, lengths, return_layer_indices if i == 0 else None)
                              for i, m in enumerate(self.members)])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        lp, out_len, _ = self.forward_with_hidden_states(x, lengths, None)
        return lp, out_len

    def _combine(self, outs: list):
        lens = [o[1] for o in outs]
        if any(not torch.equal(lens[0].cpu(), n.cpu()) for n in lens[1:]):
            raise OfflineKDError("the ensemble's teachers give different frame counts for the same utterances "
                                 "(internal error: each is aligned onto the student's frames)")
        t = min(o[0].shape[0] for o in outs)
        lp = torch.stack([o[0][:t].float() for o in outs])                          # (N, T', B, V)
        w = self.log_weights.to(lp.device)[:, None, None, None]
        combined = torch.logsumexp(lp + w, dim=0)
        # each member's posterior of the combined greedy token, (B, T', N): the members' confidence in the 1-best
        best = combined.argmax(-1)[None, ..., None].expand(lp.shape[0], -1, -1, 1)
        member = torch.gather(lp, -1, best)[..., 0].exp().permute(2, 1, 0)
        return combined, lens[0], {**outs[0][2], MEMBER_PROBS: member}


def resolve_weights(spec, members: list, where: str = "dump.teacher.weights") -> list[float]:
    """The normalised weights of `spec` (uniform | dev_wer | a list) for the loaded members (LoadedTeacher)."""
    n = len(members)
    if spec in (None, "uniform"):
        raw = [1.0] * n
    elif spec == "dev_wer":
        missing = [m.name for m in members if (m.dev or {}).get("wer") is None]
        if missing:
            raise OfflineKDError(f"{where}: dev_wer needs every teacher's recorded dev WER; {missing[0]} records "
                                 f"none (give the weights as a list instead)")
        perfect = [m.name for m in members if float(m.dev["wer"]) <= 0]
        if perfect:
            raise OfflineKDError(f"{where}: dev_wer weighs each teacher by 1 / its dev WER, and {perfect[0]} records "
                                 f"0%; give the weights as a list instead")
        raw = [1.0 / float(m.dev["wer"]) for m in members]
    elif isinstance(spec, (list, tuple)):
        if len(spec) != n or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                                     for w in spec) or not sum(spec):
            raise OfflineKDError(f"{where}: give {n} non-negative numbers, not all zero (one per teacher), got "
                                 f"{list(spec)!r}")
        raw = [float(w) for w in spec]
    else:
        raise OfflineKDError(f"{where} must be uniform, dev_wer or a list of {n} numbers, got {spec!r}")
    total = sum(raw)
    return [w / total for w in raw]


def ensemble_record(members: list, weights: list[float], spec) -> dict:
    """What the cache records: every member's record, the weights, how they are combined; its sha256 (part of the
    cache's identity) covers them all."""
    recs = [{**m.record, **({"dev": m.dev} if m.dev else {})} for m in members]
    # every member's whole record: its file hash and its alignment (vocabulary map, pooling, frame rate), so that a
    # changed member option or dump.subsampling is another dump, as it is for one teacher
    sha = hashlib.sha256(json.dumps([recs, weights, COMBINE], sort_keys=True, default=str).encode()).hexdigest()
    names = "; ".join(r.get("name", r["path"]) for r in recs)
    return {"path": "ensemble: " + ", ".join(r["path"] for r in recs), "sha256": sha, "adapter": "ensemble",
            "members": recs, "weights": weights, "weights_from": spec if isinstance(spec, str) else "list",
            "combine": COMBINE, "sha256_in_identity": True,
            "name": f"ensemble of {len(recs)} teachers ({COMBINE}, weights "
                    f"{', '.join(f'{w:.3f}' for w in weights)}): {names}"}
