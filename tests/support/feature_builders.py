"""Feature-cache builders for test_features' parallel test, in a module of their own: a spawned
worker imports only this, numpy and rps.model.features (not TensorFlow, which the test module
imports: ~10 s of CPU per worker)."""

import time
from pathlib import Path

import numpy as np

from rps.model import features


def counting_compute(counter: Path, n=6, dim=4, delay=0.0):
    """A feature computation that appends an ``x`` to ``counter`` each time it runs."""
    def compute():
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(delay)
        return np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    return compute


def build_shared(args):
    """One builder of the entry ``shared`` (computing takes 1 s): its status and checksum."""
    cache, counter, _ = args
    result = features.cached_features("shared", np.arange(6) % 3, 4, counting_compute(counter, delay=1.0), cache)
    return result.status, result.features.sum()
