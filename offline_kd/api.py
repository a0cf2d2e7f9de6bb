"""offline-kd from Python: what `from offline_kd import ...` offers.

    from offline_kd import load_model
    m = load_model("runs/x/checkpoint_best.pt")          # the checkpoint carries its front end and vocabulary
    m.transcribe(["a.wav", samples])                      # -> ["text", "text"]
    m.transcribe(["a.wav"], timestamps=True)              # -> [Transcript(uid, text, words=(Word(w, start, end),...))]
    m.log_probs(["a.wav"])                                # -> [(T', V) float32 CTC log-probs], blank = 0
    export_model("runs/x/checkpoint_best.pt", "exported", fmt="onnx", int8=True)
"""

from __future__ import annotations

from offline_kd.inference.export import ExportResult, export_model
from offline_kd.inference.model import SpeechModel, Transcript, load_model
from offline_kd.inference.timing import Word

__all__ = ["ExportResult", "SpeechModel", "Transcript", "Word", "export_model", "load_model"]
