"""The losses the Trainer calls, built from the config: `CTCLoss` (train) and `StudentLoss` (train-student). Both
follow `LossFn`. `StudentLoss` finds the batch's teacher targets (cached, encoded, or a live teacher's), its CTC
targets and per-utterance weights, and sums the recipe's terms (`losses/terms.py`) with `DistillationLoss`. A new
term is a `LossTerm` in terms.py, added to the list `StudentLoss.terms` builds.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch
from torch import nn

from offline_kd.config import AUTO_LM_LABELS, LM_LABELS, DistillConfig
from offline_kd.data.targets import EncodedTargets, TeacherTargets, lm_confidence
from offline_kd.errors import InternalError, OfflineKDError
from offline_kd.losses.aligned import label_aligned_targets
from offline_kd.losses.kd import ctc_loss, temperature_at, utterance_confidence
from offline_kd.losses.terms import CTCTerm, DistillationLoss, LossInputs, hybrid_terms
from offline_kd.models.interface import forward_batch, reads_waveform, waveform_forward
from offline_kd.models.projection import FeatureProjections
from offline_kd.models.numerics import exact_numerics


class LossFn(Protocol):
    """What the Trainer needs from a loss."""

    #: modules trained with the model and saved in checkpoints as `extra_state_dict` (None: nothing extra)
    trainable: Optional[nn.Module]

    def __call__(self, model, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (loss to back-propagate, {term: detached value}, with 'total')."""

    def scalars(self, epoch: int) -> dict[str, float]:
        """Per-epoch values to log ('train/...'), e.g. the temperature."""

    def wrap_trainable(self, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Call `trainable` through `wrap(trainable)` from now on (DistributedDataParallel); returns the wrapper."""


class CTCLoss:
    """CTC on the reference labels, with the input augmented (frame-changing augmentation allowed)."""

    trainable = None

    def __init__(self, augment, device: torch.device):
        self.augment, self.device = augment, device

    def __call__(self, model, batch, epoch):
        if reads_waveform(model):       # the input is not features: no SpecAugment (transformers masks its own)
            log_probs, out_len, _ = waveform_forward(model, batch, self.device)
        else:
            x = self.augment(batch["features"].to(self.device), batch["feature_lengths"])
            log_probs, out_len = model(x, batch["feature_lengths"].to(self.device))
        loss = ctc_loss(log_probs, batch["labels"].to(self.device), out_len, batch["label_lengths"].to(self.device))
        return loss, {"ctc": loss.detach(), "total": loss.detach()}

    def scalars(self, epoch):
        return {}

    def wrap_trainable(self, wrap):
        raise InternalError("CTCLoss has no trainable modules to wrap (internal error)")


class StudentLoss:
    """The hybrid loss of `DistillConfig`: alpha * T^2 KL + beta * CTC + gamma * feature MSE (or, with feature_loss
    codebook, the codebook cross-entropy) (+ seq_weight * CTC on the teacher's 1-best), as `DistillationLoss` of
    `hybrid_terms`; before distill.kd_start_epoch, the CTC term alone. On untranscribed utterances the CTC term's
    target is the teacher's 1-best (or LM N-best). Owns the feature projections (`trainable`). Targets come from
    the batch (`batch["teacher"]`, read from the cache) or, with `teacher`, from a live teacher that sees the same
    un-augmented input the dump saw."""

    def __init__(self, d: DistillConfig, student_dim: int, teacher_dims: dict[int, int], augment,
                 device: torch.device, teacher: Optional[nn.Module] = None, decoder=None, quantizers=None):
        self.d = d
        self.decoder = decoder        # TargetDecoder: batches of stored codes (EncodedTargets) are decoded on device
        self.mapping = {int(s): int(t) for s, t in d.layer_mapping.items()} if d.gamma else {}
        # feature_loss codebook: {teacher layer: its codebook codec} (the cache's fitted codebooks), and the heads
        # predict num_codebooks x entries logits instead of the teacher's width
        self.quantizers = {t: quantizers[t] for t in set(self.mapping.values())} if quantizers else {}
        self._q_state = {t: q.device_state(device) for t, q in self.quantizers.items()}
        widths = ({t: q.num_codebooks * q.entries for t, q in self.quantizers.items()} if self.quantizers
                  else teacher_dims)
        self.projections = FeatureProjections(self.mapping, student_dim, widths).to(device)
        self.trainable: nn.Module = self.projections
        self._project: nn.Module = self.projections
        self.augment, self.device, self.teacher = augment, device, teacher
        self.loss = DistillationLoss(hybrid_terms(d.alpha, d.beta, d.gamma, self.mapping, d.seq_weight, d.kl_frames,
                                                  d.spike_context, d.kl_target, codebook=bool(self.quantizers)))
        self.warmup = DistillationLoss([CTCTerm(1.0)])     # epochs before distill.kd_start_epoch

    def wrap_trainable(self, wrap):
        self._project = wrap(self.projections)
        return self._project

    def scalars(self, epoch):
        out = {"train/temperature": temperature_at(epoch, self.d.temperature_schedule)}
        if self.d.kd_start_epoch > 1:
            out["train/kd_active"] = float(epoch >= self.d.kd_start_epoch)
        return out

    @torch.no_grad()
    def live_targets(self, batch: dict) -> TeacherTargets:
        with exact_numerics():   # the same float32 function as the dump's (TF32 off on a GPU)
            lp, out_len, hidden = forward_batch(self.teacher, batch, self.device, sorted(set(self.mapping.values())))
        best = lp.argmax(-1).transpose(0, 1).cpu().numpy()
        return TeacherTargets.from_best_paths(lp, out_len.cpu(), hidden,
                                              [best[b, :n] for b, n in enumerate(out_len.tolist())]).to(self.device)

    def __call__(self, model, batch, epoch):
        x = batch["features"].to(self.device)
        lengths = batch["feature_lengths"].to(self.device)
        if self.teacher is not None:
            t = self.live_targets(batch)
        elif isinstance(batch["teacher"], EncodedTargets):
            t = batch["teacher"].decode(self.decoder, self.device)
        else:
            t = batch["teacher"].to(self.device)
        if reads_waveform(model):
            log_probs, out_len, hidden = waveform_forward(model, batch, self.device, sorted(self.mapping))
        else:
            log_probs, out_len, hidden = model.forward_with_hidden_states(self.augment(x, lengths), lengths,
                                                                          sorted(self.mapping))
        if not torch.equal(out_len.cpu(), t.lengths.cpu()):
            bad = [u for u, a, b in zip(batch["utterance_ids"], out_len.tolist(), t.lengths.tolist()) if a != b]
            raise OfflineKDError(f"student and cached teacher frame counts differ for {', '.join(bad[:4])}")
        d = self.d
        # untranscribed utterances (batch["labelled"] False) take the teacher's greedy 1-best as their CTC target, or
        # with pseudo_labels lm its cached LM N-best, each hypothesis weighted by its posterior (lm_1best: the best)
        refs = (batch["labels"].to(self.device), batch["label_lengths"].to(self.device), batch.get("labelled"))
        owner = weights = None
        which = self.pseudo_labels(t)
        if which in LM_LABELS:
            labels, label_lengths, owner, weights = t.nbest_labels(*refs, top=1 if which == "lm_1best" else None)
        else:
            labels, label_lengths = t.hard_labels(*refs)
        kl_w, ctc_w = self.utterance_weights(batch.get("labelled"), t)
        teacher_lp = self.kl_teacher(t, refs, which, (labels, label_lengths, owner))
        inputs = LossInputs(log_probs, out_len, teacher_lp, temperature_at(epoch, d.temperature_schedule), labels,
                            label_lengths, ctc_owner=owner, ctc_weights=weights, ctc_utterance_weights=ctc_w,
                            teacher_fields=t.fields)
        if epoch < d.kd_start_epoch:          # CTC warm-up: the student leaves the blank plateau on the labels
            return self.warmup.compute(inputs)
        inputs.kl_utterance_weights = kl_w
        inputs.teacher_tokens, inputs.teacher_token_lengths = t.tokens, t.token_lengths
        if self.mapping:
            inputs.projected, inputs.teacher_hidden = self._project(hidden), t.hidden
            inputs.teacher_codes = self.teacher_codes(t.hidden) if self.quantizers else None
        return self.loss.compute(inputs)

    def teacher_codes(self, hidden: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """{teacher layer: (B, T, D)} values (a live teacher's, or a codebook cache's reconstruction, which
        re-encodes to its stored indexes) -> {teacher layer: (B, T, N)} codebook indexes."""
        out = {}
        for t, q in self.quantizers.items():
            h = hidden[t]
            out[t] = q.codes_torch(h.reshape(-1, h.shape[-1]), self._q_state[t]).view(*h.shape[:2], -1)
        return out

    def kl_teacher(self, t: TeacherTargets, refs: tuple, which: str, ctc_targets: tuple) -> torch.Tensor:
        """The KL term's teacher log-probs: the teacher's, or with distill.kl_label_mix mixed with the forced
        alignment of each utterance's one CTC target (an N-best's best hypothesis: pseudo_labels lm)."""
        if not self.d.kl_label_mix:
            return t.log_probs
        labels, label_lengths, owner = ctc_targets
        if owner is not None and len(owner) != len(t.lengths):
            labels, label_lengths, _, _ = t.nbest_labels(*refs, top=1)
        return label_aligned_targets(t.log_probs, t.lengths, labels, label_lengths, self.d.kl_label_mix)

    def pseudo_labels(self, t: TeacherTargets) -> str:
        return batch_pseudo_labels(self.d, t)

    def utterance_weights(self, labelled, t: TeacherTargets):
        """(KL, CTC) per-utterance weights (B,) for the batch, or None where every utterance weighs 1: on
        untranscribed utterances distill.untranscribed_alpha / alpha and untranscribed_beta / beta, the CTC one
        times the teacher's confidence with distill.confidence_weighting (with an LM's pseudo-labels, times the LM
        1-best's posterior among the stored N: `lm_confidence`)."""
        d = self.d
        if labelled is None or bool(labelled.all()) or not (
                d.untranscribed_alpha is not None or d.untranscribed_beta is not None or d.confidence_weighting):
            return None, None
        unl = ~labelled.to(self.device)
        one = torch.ones(len(unl), device=self.device)

        def on_untranscribed(x):
            return torch.where(unl, x * one, one)
        kl_w = on_untranscribed(d.untranscribed_alpha / d.alpha) if d.untranscribed_alpha is not None and d.alpha \
            else None
        ctc_w = on_untranscribed(d.untranscribed_beta / d.beta) if d.untranscribed_beta is not None and d.beta \
            else None
        if d.confidence_weighting:
            conf = utterance_confidence(t.log_probs, t.lengths).to(self.device)
            if batch_pseudo_labels(d, t) in LM_LABELS:
                conf = conf * lm_confidence(t.nbest, len(conf)).to(self.device)
            conf = on_untranscribed(conf)
            ctc_w = conf if ctc_w is None else ctc_w * conf
        return kl_w, ctc_w


def batch_pseudo_labels(d: DistillConfig, t) -> str:
    """distill.pseudo_labels for a batch's targets `t`: train-student resolves auto against the cache beforehand; a
    loss used on its own takes the LM's labels (AUTO_LM_LABELS) where the batch's targets carry an N-best."""
    if d.pseudo_labels != "auto":
        return d.pseudo_labels
    return AUTO_LM_LABELS if getattr(t, "nbest", None) is not None else "greedy"

