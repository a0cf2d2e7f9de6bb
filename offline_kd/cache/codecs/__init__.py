"""Per-field codecs, one file per family (dense, topk, sampled, lowrank), registered by (field, name) and
self-describing through `to_dict()`; the contract is in base.py, the registry in registry.py.

A codec turns one field of a batch of frames into named per-frame arrays (`encode`) and back (`decode`). Its spec
(name + settings, and any fitted state such as a low-rank basis, stored as cache arrays) is written into the cache,
so a reader never needs settings retyped. Every codec is exercised by the same round-trip test with its error bound.

Log-prob codecs (input `(F, V)` float32 log-probabilities at temperature 1):
  float32   exact
  float16   |error| <= 2^-11 * |x| (fp16 rounding)
  topk      per frame the k largest log-probs (fp16) with their token ids and the log of the remaining tail mass;
            `coverage` makes k per frame the smallest that reaches that probability mass (capped at `k`).
            Decoding spreads the tail mass over the V - k tokens that were not kept, so the dense distribution
            sums to 1 (the documented approximation; see docs/cache-format.md): uniformly (`tail: uniform`),
            in proportion to the teacher's mean distribution fitted at dump time and stored in the cache
            (`tail: prior`), or shaped per frame by the `lowrank` codec's reconstruction of the logits
            (`tail: lowrank`: the head exact, the tail's total exact, its shape from `tail_rank` coefficients).
  sampled   Sparse Logit Sampling (Anshumann et al., 2025): per frame `samples` tokens drawn from the teacher's
            distribution, stored as the distinct tokens and their counts. The decoded target counts / samples is
            an unbiased estimate of the teacher distribution (its expectation is exactly p), so the soft-KD
            gradient at T = 1 is unbiased, unlike top-k; its support is the drawn tokens only (log-prob -inf
            elsewhere). Draws are seeded by the frames' own bytes, so a dump is reproducible.
  lowrank   the logits (log-probs centred per frame) as `rank` coefficients on a PCA basis fitted at dump time
            (int8 whitened or fp16); decoding is log-softmax(mean + coeffs @ basis), a normalised distribution
            with full support whose error is measured, not bounded (KL per frame in docs/benchmarks.md).
Hidden-state codecs (input `(F, D)` float32):
  float32, float16
  int8      per-frame symmetric scale (absmax / 127), |error| <= scale / 2
  lowrank   x ~ mean + coeffs @ basis, basis (r, D) fitted by PCA on a sample of frames; coeffs fp16, int8
            (whitened by each component's standard deviation, then one absmax scale per frame), or `step`: one
            uniform quantiser step for all components, fitted for a target relative error, int8 codes stored
            component-major so zstd entropy-codes each component's narrow range (small components cost ~nothing)
  codebook  product quantisation (MVQ-KD): `num_codebooks` sub-vectors per frame, each the uint8 index of its
            nearest of `entries` k-means centroids fitted at dump time; decodes to the centroids + mean
"""

from offline_kd.cache.codecs.base import CodecBase, FieldArray, logsumexp
from offline_kd.cache.codecs.registry import (codec_from_spec, hidden_codec, load_state, log_prob_codec,
                                              register_codec, registered, state_arrays)
from offline_kd.cache.codecs.dense import (Float16Hidden, Float16LogProbs, Float32Hidden, Float32LogProbs,
                                           Int8Hidden)
from offline_kd.cache.codecs.lowrank import LowRankHidden, LowRankLogProbs
from offline_kd.cache.codecs.codebook import CodebookHidden
from offline_kd.cache.codecs.sampled import SampledLogProbs
from offline_kd.cache.codecs.topk import TopKLogProbs

__all__ = ["CodecBase", "FieldArray", "logsumexp", "codec_from_spec", "hidden_codec", "load_state", "log_prob_codec",
           "register_codec", "registered", "state_arrays", "Float16Hidden", "Float16LogProbs", "Float32Hidden",
           "Float32LogProbs", "Int8Hidden", "CodebookHidden", "LowRankHidden", "LowRankLogProbs", "SampledLogProbs", "TopKLogProbs"]
