"""Background prefetch of training batches in a thread (for `data.num_workers: 0`).

Reading a batch (HDF5 features, cache chunks from local disk or object storage, decoding) overlaps the previous
batch's compute: zarr and h5py release the GIL while they wait on I/O or decompress, and zarr fetches the chunks
of one read concurrently. Errors raised while loading are re-raised in the training loop, in order.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(iterable: Iterable, depth: int) -> Iterator:
    """Yield the items of `iterable`, loading up to `depth` ahead in a background thread (depth 0: no thread)."""
    if depth <= 0:
        yield from iterable
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterable:
                if not hand_over(item):
                    return
            hand_over(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            hand_over(_Failure(exc))

    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        # the consumer is done (or failed): let the batch being read finish before the caller goes on, so that no
        # cache read is in flight on zarr's event loop when the process exits (zarr's exit handler would fail on
        # a busy loop, and print a traceback beside the one-line error that stopped training)
        stop.set()
        thread.join(timeout=30)
