"""Typed errors. Every message names the offending value and what is allowed."""


_MAX_MESSAGE = 1000  # characters; longer messages keep their head and tail


class VDTError(Exception):
    """Base class for every error this SDK raises on purpose. Its message is one line of at most 1000
    characters (a safety net: messages cut the values they echo themselves, see limits.shorten)."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            text = " ".join(args[0].split())
            if len(text) > _MAX_MESSAGE:
                text = f"{text[:700]} [... {len(text) - 950} characters cut ...] {text[-250:]}"
            args = (text,)
        super().__init__(*args)


class InputError(VDTError, ValueError):
    """A caller-supplied value (frames, mask, task, steps, seed, path, ...) is not acceptable."""


class BundleError(VDTError):
    """A bundle is missing, malformed, tampered with or of an unsupported format version."""


class BackendError(VDTError):
    """An inference backend is unavailable or failed to run."""


class SelfTestError(BackendError):
    """A backend's outputs on the bundle's golden cases are non-finite or outside the manifest's tolerance (or the
    bundle carries no golden cases to check), at load with selftest=True or after a TensorRT engine build."""
