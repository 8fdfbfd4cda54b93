"""The one small interface every inference backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from vdt_runtime.bundle import TensorSpec


class Backend(ABC):
    """Runs one bundle stage. Subclasses set the attributes below in their constructor."""

    name: str  # backend family, e.g. "onnxruntime"
    stage: str  # bundle stage it runs: denoiser, vae_encoder, vae_decoder
    precision: str  # which of the stage's files it loaded
    inputs: tuple[TensorSpec, ...]  # declared I/O contract from the manifest
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...]  # what really runs (not what was asked for)
    graph: str = "standard"  # "fused" when an onnxruntime-fused variant of the stage file was loaded

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed {input name: array}; return {output name: array}."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stage} {self.precision} ({self.graph}) on {', '.join(self.providers)}>"
