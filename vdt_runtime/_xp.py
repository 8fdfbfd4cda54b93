"""The array library of the sampler state, taken from the arrays themselves: NumPy on the CPU, CuPy when a GPU
backend hands back device arrays, so the same sampler code keeps its state where the denoiser's output lives.

Sampler code calls `xp.<function>` for everything that is not an operator or an indexing (`namespace(x)` below),
never `numpy.<function>` on a state array; tests/runtime/test_sampler_xp.py runs every sampler through a namespace that
refuses anything else. Coefficients from the schedule stay host-side Python floats.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np


def namespace(*arrays) -> ModuleType:
    """The array module of the first array that is not a plain NumPy array (CuPy is imported only when such an
    array is a CuPy one); NumPy when all are NumPy or None."""
    for a in arrays:
        if a is None or type(a) is np.ndarray:
            continue
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
        get = getattr(a, "__array_namespace__", None)
        if get is not None:
            return get()
    return np


def to_numpy(a) -> np.ndarray:
    """A host NumPy array of `a` (a device copy for CuPy, `a` itself for NumPy)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)
