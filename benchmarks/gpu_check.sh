#!/usr/bin/env bash
# GPU checks (issues 12, 20): the default Pipeline.load() on this machine, FP16 ONNX parity, CuPy sampler vs NumPy,
# cuda.bindings buffers, torch-CUDA eager fp32/fp16 reference timings for a random VDT-S/2, onnxruntime's CUDA
# provider vs torch CUDA (parity, I/O binding and CUDA graphs on/off, per call and per video, CuPy state path) where
# onnxruntime-gpu is installed and, where TensorRT is installed, engine build, TRT-vs-onnxruntime parity and
# per-call / per-video timings. Each check records SKIP (with the reason) when this
# machine lacks what it needs. Needs the export extra (torch with CUDA); cupy / tensorrt / cuda-python optional.
#   benchmarks/gpu_check.sh [results.jsonl]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-benchmarks/gpu_check_results.jsonl}"
py="${PYTHON:-python}"
nvidia-smi || echo "nvidia-smi not found"
uptime
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$py" benchmarks/gpu_check.py --out "$out"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$py" -m pytest -q -rs -m gpu tests/runtime/test_sampler_xp.py tests/runtime/test_tensorrt_logic.py tests/runtime/test_ort_cuda.py \
  tests/runtime/test_tensorrt_cuda_side.py || true
