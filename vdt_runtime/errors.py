"""Typed errors. Every message names the offending value and what is allowed."""


class VDTError(Exception):
    """Base class for every error this SDK raises on purpose."""


class InputError(VDTError, ValueError):
    """A caller-supplied value (frames, mask, task, steps, seed, path, ...) is not acceptable."""


class BundleError(VDTError):
    """A bundle is missing, malformed, tampered with or of an unsupported format version."""


class BackendError(VDTError):
    """An inference backend is unavailable or failed to run."""
