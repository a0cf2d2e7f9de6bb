"""Run one `offline-kd` command in this process and print, as the last line, a JSON record of its wall time, peak
host memory (max RSS) and, with CUDA, peak GPU memory. Used by ablation_cost.py:

    python benchmarks/_peak.py train-student --config ...
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    import torch
    from offline_kd.cli import main as cli
    start = time.perf_counter()
    try:
        cli.main(sys.argv[1:], standalone_mode=False)
    finally:
        seconds = time.perf_counter() - start
    cuda = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    print(json.dumps({"seconds": round(seconds, 2),
                      "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "cuda_peak_mb": None if cuda is None else round(cuda, 1)}))


if __name__ == "__main__":
    main()
