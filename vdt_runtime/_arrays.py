"""Turn caller-supplied array-likes into ndarrays, refusing ragged input with a typed error."""
from __future__ import annotations

import numpy as np

from vdt_runtime.errors import InputError


def as_array(value, name: str, expected: str) -> np.ndarray:
    """np.asarray(value), or InputError naming `name`, the element shapes found and the `expected` layout.

    A list of arrays of different sizes (e.g. frames of mixed resolutions) is the usual culprit.
    """
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        pass
    shapes = []
    if isinstance(value, (list, tuple)):
        for item in value:
            try:
                shapes.append(tuple(np.shape(item)))
            except ValueError:
                shapes.append("ragged")
    found = f"elements of mixed shapes {sorted(set(map(str, shapes)))}" if shapes else f"a {type(value).__name__}"
    raise InputError(f"{name} must be one array {expected}; got {found}")
