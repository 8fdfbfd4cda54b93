"""vdt_export: the torch side of vdt — checkpoints, VAE, ONNX export, bundle writing and parity checks."""

__version__ = "0.1.0"
