"""Comparing scores computed two ways (another runtime, other batch sizes): float32 arithmetic
agrees to about 1e-6 relative, which means nothing for a score near zero."""

from __future__ import annotations

import numpy as np


def assert_scores_close(got, want, rtol: float, what: str) -> None:
    """Within ``rtol`` of ``want``; a score that crosses zero (``combined``) relative to its
    largest magnitude."""
    want = np.asarray(want, dtype=np.float64)
    atol = rtol * float(np.max(np.abs(want))) if np.any(want <= 0) else 0.0
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol,
                               err_msg=what)
