"""A Hugging Face transformers CTC model as a teacher: `Wav2Vec2ForCTC`, `HubertForCTC`, `WavLMForCTC` from a local
directory (`dump.teacher: {huggingface: DIR}`).

The directory holds what `save_pretrained` and the tokenizer write: `config.json`, the weights as safetensors
(`model.safetensors`, or shards with `model.safetensors.index.json`; pickled `pytorch_model.bin` is refused: loading
a file never runs code), `vocab.json`, and optionally `tokenizer_config.json` / `special_tokens_map.json` (pad, word
delimiter, special tokens) and `processor_config.json` (transformers 5) or `preprocessor_config.json` (sampling
rate, per-utterance normalisation). Nothing is downloaded: everything is read from the directory, with
`trust_remote_code` off.

A model id instead of a directory (`{huggingface: facebook/wav2vec2-base-960h}`, optionally `@REVISION`) is looked up
in the local Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub) as
`HF_HUB_OFFLINE=1` would: the snapshot a `huggingface-cli download` (or an earlier `from_pretrained`) left there.

What the teacher gives: log-probs from the CTC head (log-softmax in float32), the hidden states of transformer
layers 1..num_hidden_layers as `output_hidden_states` numbers them (layer 0, the embeddings, is not offered), blank
= the model's pad token, one frame per product of the conv strides in samples (320: 20 ms at 16 kHz). The input is
the corpus's kept audio (`data import --keep-audio`), int16 scaled to [-1, 1), normalised per utterance as the
model's feature extractor does. Models whose feature extractor takes no attention mask (`feat_extract_norm: group`,
e.g. wav2vec2-base) are run one utterance at a time, so that padding never changes an utterance's outputs; the
others run batched with an attention mask.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from offline_kd.errors import OfflineKDError
from offline_kd.models.hf_directory import _json, preprocessing, resolve_model_dir, weight_files

SUPPORTED = {"wav2vec2": "Wav2Vec2ForCTC", "hubert": "HubertForCTC", "wavlm": "WavLMForCTC"}


def _token(value):
    """A token in tokenizer_config.json: a string, or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def hf_vocabulary(d: Path, config: dict, where: str) -> tuple[tuple, int, str, tuple]:
    """(tokens in id order, the blank's id (the pad token), the word delimiter, the special tokens) of a Hugging Face CTC
    directory's vocab.json and tokenizer files."""
    vocab = _json(d / "vocab.json", where)
    if vocab and all(isinstance(v, dict) for v in vocab.values()):
        raise OfflineKDError(f"{where}: {d}/vocab.json holds one vocabulary per language; keep one")
    by_id = {}
    for tok, i in vocab.items():
        if not isinstance(i, int) or i in by_id:
            raise OfflineKDError(f"{where}: {d}/vocab.json must map tokens to distinct integer ids")
        by_id[i] = tok
    tok_cfg = {**_json(d / "special_tokens_map.json", where, False), **_json(d / "tokenizer_config.json", where,
                                                                             False)}
    n = int(config.get("vocab_size", len(by_id)))
    for i, t in (tok_cfg.get("added_tokens_decoder") or {}).items():     # tokens added beyond vocab.json
        if str(i).isdigit() and int(i) < n:                               # (those past the CTC head: unused)
            by_id.setdefault(int(i), _token(t))
    if sorted(by_id) != list(range(n)):
        raise OfflineKDError(f"{where}: {d}/vocab.json has ids {min(by_id, default=0)}..{max(by_id, default=-1)} "
                             f"({len(by_id)} tokens) but the model's CTC head has {n} classes")
    tokens = tuple(by_id[i] for i in range(n))
    pad = config.get("pad_token_id")
    if pad is None and _token(tok_cfg.get("pad_token")) in vocab:
        pad = vocab[_token(tok_cfg.get("pad_token"))]
    if pad is None or not 0 <= int(pad) < n:
        raise OfflineKDError(f"{where}: {d} names no pad token (the CTC blank): set pad_token_id in config.json")
    blank = int(pad)
    delimiter = _token(tok_cfg.get("word_delimiter_token")) or "|"
    special = tuple(t for t in (_token(tok_cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token"))
                    if t and t in tokens) or tuple(t for t in ("<s>", "</s>", "<unk>") if t in tokens)
    return tokens, blank, delimiter, special


def directory_sha256(d: Path, files: list[Path]) -> str:
    """sha256 over the files that define the teacher (config, vocabulary, weights), by name and content."""
    h = hashlib.sha256()
    for p in sorted(files + [d / n for n in ("config.json", "vocab.json", "tokenizer_config.json",
                                               "special_tokens_map.json", "preprocessor_config.json",
                                               "processor_config.json")
                             if (d / n).is_file()]):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class HFTeacher(nn.Module):
    """A transformers CTC model from a local directory, seen through the teacher interface (native frames)."""

    model_type = "huggingface"
    input_kind = "waveform"

    def __init__(self, directory: str, where: str = "dump.teacher"):
        super().__init__()
        d = resolve_model_dir(directory, where)
        config = _json(d / "config.json", where)
        kind = config.get("model_type")
        if kind not in SUPPORTED:
            raise OfflineKDError(f"{where}: {d} holds a {kind!r} model; supported: "
                                 f"{', '.join(f'{k} ({v})' for k, v in SUPPORTED.items())}")
        files = weight_files(d, where)
        self._tokens, self._blank, self.word_delimiter, self.special = hf_vocabulary(d, config, where)
        pre = preprocessing(d, where)
        self.sample_rate = int(pre.get("sampling_rate", 16000))
        self.do_normalize = bool(pre.get("do_normalize", True))
        try:
            import transformers
        except ImportError:
            raise OfflineKDError(f"{where}: a Hugging Face teacher needs transformers: pip install "
                                 f"'offline-kd[hf]'") from None
        cls = getattr(transformers, SUPPORTED[kind])
        transformers.utils.logging.disable_progress_bar()       # the dump's own progress bar is the one shown
        transformers.utils.logging.set_verbosity_error()
        try:
            self.model = cls.from_pretrained(str(d), local_files_only=True, use_safetensors=True,
                                             trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001  (a broken directory is reported on one line)
            raise OfflineKDError(f"{where}: transformers cannot load {d} ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]})") from None
        self.model.eval()
        c = self.model.config                 # the loaded config: transformers' defaults filled in
        self.batched = getattr(c, "feat_extract_norm", "group") == "layer"
        self.frame_shift_samples = math.prod(int(x) for x in c.conv_stride)
        self.num_hidden_layers, self.hidden_size = int(c.num_hidden_layers), int(c.hidden_size)
        self.directory, self.kind, self.sha256 = str(d), kind, directory_sha256(d, files)

    # --------------------------------------------------------------------------------------- interface
    @property
    def tokens(self) -> tuple:
        return self._tokens

    @property
    def blank(self) -> int:
        return self._blank

    def layer_dims(self) -> dict[int, int]:
        return {L: self.hidden_size for L in range(1, self.num_hidden_layers + 1)}

    def describe(self) -> dict:
        return {"huggingface": self.directory, "model_type": self.kind, "architecture": SUPPORTED[self.kind]}

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(samples).to(torch.int64)

    def prepare(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Padded samples (B, N) in [-1, 1) -> the model's input values: each utterance normalised to zero mean and
        unit variance over its own samples (the feature extractor's do_normalize), padding left at 0."""
        x = audio.float()
        if not self.do_normalize:
            return x
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
        n = mask.sum(1, keepdim=True).clamp_min(1)
        mean = (x * mask).sum(1, keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
        return ((x - mean) / torch.sqrt(var + 1e-7)) * mask

    def forward_with_hidden_states(self, audio: torch.Tensor, lengths: torch.Tensor, return_layer_indices=None):
        """Samples (B, N) and their counts (B,) -> (log_probs (T', B, V), output lengths (B,), {L: (B, T', H)})."""
        layers = sorted(set(return_layer_indices or []))
        x = self.prepare(audio, lengths)
        out_len = self.output_lengths(lengths.to(torch.int64))
        if self.batched:
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]).long()
            parts = [self._run(x, mask, layers)]
        else:
            parts = [self._run(x[b:b + 1, :int(lengths[b])], None, layers) for b in range(x.shape[0])]
        t_max = int(out_len.max()) if len(out_len) else 0
        lp = torch.zeros(len(out_len), t_max, len(self._tokens), device=x.device)
        hidden = {L: torch.zeros(len(out_len), t_max, self.hidden_size, device=x.device) for L in layers}
        row = 0
        for logits, states in parts:
            for j in range(logits.shape[0]):
                t = min(int(out_len[row]), logits.shape[1])
                lp[row, :t] = torch.log_softmax(logits[j, :t].float(), -1)
                for L in layers:
                    hidden[L][row, :t] = states[L][j, :t].float()
                row += 1
        return lp.transpose(0, 1), out_len, hidden

    def _run(self, x, mask, layers):
        out = self.model(x, attention_mask=mask, output_hidden_states=bool(layers))
        return out.logits, ({L: out.hidden_states[L] for L in layers} if layers else {})
