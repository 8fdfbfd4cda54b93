"""FP16 stages: the precision policy as written in the graph, error against fp32 held under a stated tolerance
(onnxruntime CPU), and the manifest entries."""
from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

# fp16 vs fp32 on random stage inputs, relative to the fp32 output's magnitude. Measured on the tiny random
# model: denoiser rel_mean ≈ 5e-4, rel_max ≈ 1e-3 (BENCHMARKS.md has VDT-S/2 and the default model).
TOL_REL_MEAN, TOL_REL_MAX = 5e-3, 2e-2
FP32_OPS = ("LayerNormalization", "InstanceNormalization", "Softmax")  # InstanceNormalization: GroupNorm's export


@pytest.fixture(scope="module")
def fp16_bundle(tiny_bundle, tiny_models, tmp_path_factory):
    from vdt_export.fp16 import add_fp16

    out = tmp_path_factory.mktemp("fp16") / "tiny"
    shutil.copytree(tiny_bundle, out)
    vdt, vae = tiny_models
    add_fp16(out, vdt, vae)
    return out


def _float_types(path) -> dict[str, collections.Counter]:
    """op type -> Counter of the float element types of its inputs (from the exporter's value_info)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    floats = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}
    out = collections.defaultdict(collections.Counter)
    for node in graph.node:
        for name in node.input:
            if name and types.get(name) in floats:
                out[node.op_type][floats[types[name]]] += 1
    return out


def test_files_listed_with_hashes(fp16_bundle):
    from vdt_runtime.bundle import Bundle, sha256_file

    manifest = json.loads((fp16_bundle / "manifest.json").read_text())
    for stage in ("denoiser", "vae_encoder", "vae_decoder"):
        name = manifest["stages"][stage]["files"]["fp16"]
        assert manifest["files"][name] == {"sha256": sha256_file(fp16_bundle / name),
                                           "size": (fp16_bundle / name).stat().st_size}
    assert not list(fp16_bundle.glob(".*")), "temp files left behind"
    assert "fp16" in Bundle.load(fp16_bundle, verify=True).precisions("denoiser")


@pytest.mark.parametrize("stage", ["denoiser", "vae_encoder", "vae_decoder"])
def test_policy_is_written_in_the_graph(fp16_bundle, stage):
    """Norms and softmax see only fp32, the heavy ops fp16, and the graph's I/O stay float32."""
    import onnx

    path = fp16_bundle / f"{stage}.fp16.onnx"
    ops = _float_types(path)
    for op in FP32_OPS:
        assert ops.get(op, {}).get("fp16", 0) == 0, f"{op} runs in fp16: {ops[op]}"
    assert ops["Softmax"]["fp32"] > 0
    heavy = "MatMul" if stage == "denoiser" else "Conv"
    assert ops[heavy]["fp16"] > ops[heavy]["fp32"], f"{heavy} is mostly fp32: {ops[heavy]}"
    graph = onnx.load(str(path)).graph
    assert {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)} == {onnx.TensorProto.FLOAT}


def test_denoiser_final_layer_and_timestep_embedding_fp32(fp16_bundle):
    """The timestep embedding (Sin/Cos) and the last MatMul/Gemm before the output are fp32."""
    ops = _float_types(fp16_bundle / "denoiser.fp16.onnx")
    assert ops["Sin"] == {"fp32": 1} and ops["Cos"] == {"fp32": 1}
    assert ops["Gemm"]["fp32"] >= 3  # t_embedder.mlp.0, .2 and the final adaLN (B rows: Gemm)
    assert ops["MatMul"]["fp32"] >= 1  # final_layer.linear on the tokens


@pytest.mark.parametrize("stage", ["denoiser", "vae_encoder", "vae_decoder"])
def test_error_against_fp32_under_tolerance(fp16_bundle, stage):
    from vdt_export.stage_error import precision_error

    e = precision_error(fp16_bundle, precision="fp16", stage=stage, trials=2)
    assert e["providers"] == ["CPUExecutionProvider"]
    assert e["max_abs"] > 0, "fp16 output identical to fp32: nothing ran in fp16"
    assert e["rel_mean"] < TOL_REL_MEAN and e["rel_max"] < TOL_REL_MAX, e


def test_denoiser_runs_at_every_declared_shape(fp16_bundle):
    """Dynamic B and T survive the half export: B = 1, 2 and T = 1 … max on the CPU provider."""
    import onnxruntime as ort

    manifest = json.loads((fp16_bundle / "manifest.json").read_text())
    stage = manifest["stages"]["denoiser"]
    session = ort.InferenceSession(str(fp16_bundle / stage["files"]["fp16"]), providers=["CPUExecutionProvider"])
    c, h, w = stage["inputs"][0]["shape"][2:]
    rng = np.random.default_rng(0)
    for b, t in ((1, 1), (2, 3), (1, manifest["model"]["max_frames"])):
        out = session.run(None, {"latents": rng.standard_normal((b, t, c, h, w), dtype=np.float32),
                                 "timestep": np.full(b, 500.0, np.float32)})[0]
        assert out.dtype == np.float32 and out.shape[:2] == (b, t) and np.isfinite(out).all()


def test_wrong_model_refused(fp16_bundle, tmp_path):
    from vdt_export.sources import randomize_
    from vdt_export.fp16 import add_fp16
    from vdt_export.models import VDT, config_from_name
    from vdt_runtime.errors import InputError

    other = randomize_(VDT(config_from_name("VDT-tiny", input_size=8, num_frames=8, in_channels=4, depth=3)), 0)
    with pytest.raises(InputError, match="depth=3"):
        add_fp16(fp16_bundle, other)
