"""The onnxruntime-fused denoiser graph: every attention becomes one `com.microsoft.Attention` node.

onnxruntime's Attention operator takes the input [S, L, D] with the packed q/k/v weight [D, 3D] and bias [3D]
and does the projection, the head split, softmax(QKᵀ/√d)·V and the head merge in one kernel, so the graph
loses the bias Add, the q/k/v Transpose + Split and the output Transpose of each attention (on a random VDT-S/2
at 16 frames, 32×32 latent, one CPU call went from 0.92 to 0.74 s; BENCHMARKS.md §1(c)). The dynamic INT8 quantizer
turns it into `QAttention`. Only onnxruntime runs these operators (CPU and CUDA providers), so a bundle keeps
the portable graph for TensorRT and other runtimes and lists this one beside it (docs/bundle-format.md).

How: during export, `Attention.forward` calls the custom op `vdt::attention` (plain torch maths, so
torch.export sees one node), and the exporter's custom translation table writes that node as
`com.microsoft.Attention`. onnx has no schema for that operator, so one is registered for the export only.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript import opset20 as op

from .models import VDT, Attention, sdpa_attention

OPSET = 20  # ONNX Gelu (tanh) exists from 20; onnxruntime fuses it with the bias into FastGelu
DOMAIN = "com.microsoft"


@torch.library.custom_op("vdt::attention", mutates_args=())
def fused_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """models.sdpa_attention as one opaque op, so torch.export keeps it as a single node."""
    return sdpa_attention(x, weight, bias, num_heads)


@fused_attention.register_fake
def _(x, weight, bias, num_heads):
    return torch.empty_like(x)


def _attention_onnx(x, weight, bias, num_heads: int):
    # onnxruntime wants the weight as [D, 3D]; the exporter folds this Transpose of a constant away
    return onnxscript.values.Opset(DOMAIN, 1).Attention(x, op.Transpose(weight, perm=[1, 0]), bias,
                                                         num_heads=num_heads)


TRANSLATIONS = {torch.ops.vdt.attention.default: _attention_onnx}


def _fused_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    b, n, length, d = x.shape  # [B, X, L, D] → one [B·X, L, D] batch of sequences
    out = fused_attention(x.reshape(b * n, length, d), self.qkv.weight, self.qkv.bias, self.num_heads)
    return self.proj(out.reshape(b, n, length, d))


def _schema() -> OpSchema:
    t = "T"
    return OpSchema(
        "Attention", DOMAIN, 1,
        doc="onnxruntime contrib Attention (input, weights [D, 3D], bias [3D]); registered for export only",
        inputs=[OpSchema.FormalParameter(n, t) for n in ("input", "weights", "bias")],
        outputs=[OpSchema.FormalParameter("output", t)],
        type_constraints=[(t, ["tensor(float)"], "float32")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads")],
    )


@contextlib.contextmanager
def fused_export(vdt: VDT) -> Iterator[dict]:
    """While active, the attentions of `vdt` export as com.microsoft.Attention; yields the translation table."""
    registered = not onnx.defs.has("Attention", DOMAIN)
    if registered:
        onnx.defs.register_schema(_schema())
    attentions = [m for m in vdt.modules() if isinstance(m, Attention)]
    for m in attentions:
        m.forward = types.MethodType(_fused_forward, m)
    try:
        yield TRANSLATIONS
    finally:
        for m in attentions:
            del m.forward  # back to the class's forward
        if registered:
            onnx.defs.deregister_schema("Attention", 1, DOMAIN)
