"""Kernel set-up shared by ``bench_day.py`` (its ``kernel*`` cases) and ``profile_kernel.py``:
outputs sized for a whole stream, pre-touched, and the kernel compiled and warmed up, so
that only the kernel itself is timed or sampled. Not a benchmark on its own."""

from __future__ import annotations

import numpy as np

from mbo_lab.book import kernel as K
from mbo_lab.book.engine import NumbaEngine
from mbo_lab.book.frames import FrameBuffer


def kernel_buffer(recs: np.ndarray, levels: int, warm: int = 0):
    """``(buf, n_trades)`` for the book kernel over all of ``recs`` (a kernel view, see
    ``mbo_lab.book.engine._readonly``): a ``FrameBuffer`` of their F_LAST count
    (column-major for more than one level) whose kernel outputs are pre-touched (no page
    fault is timed), and, with ``warm > 0``, the kernel run once over the first ``warm``
    records into it (compiled and warm; the buffer is overwritten by the next run)."""
    n_last, n_tr, _ = K.scan_counts(recs)
    buf = FrameBuffer(n_last, levels, column_major=levels > 1)
    for a in buf.kernel_outputs():
        a.view(np.uint8).fill(0)  # pre-touched: only the kernel is measured
    if warm:
        NumbaEngine(levels, trades=False).run(recs[:warm], buf, 0, np.zeros(0, np.int64), 0)
    return buf, n_tr
