"""vdt_runtime: run exported VDT bundles with NumPy + onnxruntime; never imports torch."""
from vdt_runtime.bundle import Bundle, default_bundle_path
from vdt_runtime.errors import BackendError, BundleError, InputError, VDTError
from vdt_runtime.requests import TASKS, Request
from vdt_runtime.pipeline import Pipeline, Result
from vdt_runtime.samplers import SAMPLERS
from vdt_runtime.video import read_video, write_video

__version__ = "0.1.0"

__all__ = [
    "Bundle", "Pipeline", "Request", "Result", "TASKS", "SAMPLERS", "read_video", "write_video", "default_bundle_path",
    "VDTError", "InputError", "BundleError", "BackendError", "__version__",
]
