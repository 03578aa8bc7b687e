"""Small synthetic multivariate series for the sequence tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

PERIOD = 20  # steps per turn of the normal rotation


def rotating(n: int, seed: int = 0, anomalies: list[tuple[int, int]] = (), t0: int = 0
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """A point turning on the unit circle, (sin, cos), about once every ``PERIOD`` steps,
    plus a third channel that is their product: every row lies on the same curve. In the
    ``anomalies`` segments [start, stop) the point turns backwards at the same speed: each row
    is still a normal row, only the order over time is wrong, which a row-wise model cannot
    see.

    Returns:
        ``(frame with t, a, b, c; labels (n,) 0/1)``.
    """
    rng = np.random.default_rng(seed)
    # The speed varies a little from step to step, so windows start at every phase (a fixed
    # speed would visit PERIOD phases only, and a new series' windows would all be unseen).
    step = 2 * np.pi / PERIOD * rng.uniform(0.8, 1.2, size=n)
    labels = np.zeros(n, dtype=int)
    for start, stop in anomalies:
        step[start:stop] *= -1
        labels[start:stop] = 1
    phase = np.cumsum(step) + rng.uniform(0, 2 * np.pi)
    a, b = np.sin(phase), np.cos(phase)
    noise = 0.03 * rng.normal(size=(3, n))
    frame = pd.DataFrame({"t": np.arange(t0, t0 + n), "a": a + noise[0], "b": b + noise[1],
                          "c": a * b + noise[2]})
    return frame, labels
