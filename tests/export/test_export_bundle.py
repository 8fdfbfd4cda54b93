"""The bundle writer: manifest contents, file hashes, max_frames extension and atomic replacement."""
from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from vdt_export.bundle import diffusion_config, export_bundle, write_manifest  # noqa: E402
from vdt_runtime.errors import InputError  # noqa: E402


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_manifest_lists_every_file_with_its_sha256(tiny_bundle):
    manifest = _manifest(tiny_bundle)
    on_disk = sorted(p.name for p in tiny_bundle.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk == ["denoiser.data", "denoiser.fused.onnx", "denoiser.onnx",
                                                    "golden.npz", "vae_decoder.onnx", "vae_encoder.onnx"]
    for name, entry in manifest["files"].items():
        data = (tiny_bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_manifest_follows_the_format(tiny_bundle):
    m = _manifest(tiny_bundle)
    assert (m["format"], m["format_version"], m["name"], m["opset"], m["precision"]) == (
        "vdt-bundle", 1, "tiny", 18, "fp32")
    assert m["model"] == {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 2,
                          "num_heads": 4, "mlp_ratio": 4.0, "num_frames": 8, "num_classes": 1,
                          "learn_sigma": True, "max_frames": 8}
    assert m["diffusion"] == {"beta_schedule": "linear", "num_timesteps": 1000, "prediction_type": "epsilon",
                              "variance_type": "learned_range"}
    assert m["vae"] == {"scale_factor": 0.18215, "downsample": 2, "latent_channels": 4}
    assert m["image_size"] == 16 and m["created"].endswith("Z")
    assert set(m["exporter"]) == {"vdt_export", "torch", "onnx"}
    den = m["stages"]["denoiser"]
    assert den["inputs"][0]["shape"] == ["batch", "frames", 4, 8, 8]
    assert den["outputs"][0] == {"name": "model_out", "dtype": "float32", "shape": ["batch", "frames", 8, 8, 8]}
    assert den["dynamic_axes"] == {"batch": {"min": 1, "opt": 1, "max": 16}, "frames": {"min": 1, "opt": 8, "max": 8}}
    enc, dec = m["stages"]["vae_encoder"], m["stages"]["vae_decoder"]
    assert enc["outputs"][0]["shape"] == dec["inputs"][0]["shape"] == ["batch", 4, "latent_height", "latent_width"]
    assert enc["dynamic_axes"]["height"] == {"min": 2, "opt": 16, "max": 16}
    assert dec["dynamic_axes"]["latent_width"] == {"min": 1, "opt": 8, "max": 8}
    # every input name in an ONNX file matches the manifest
    for stage in m["stages"].values():
        sess = ort.InferenceSession(str(tiny_bundle / stage["files"]["fp32"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [i["name"] for i in stage["inputs"]]
        assert [o.name for o in sess.get_outputs()] == [o["name"] for o in stage["outputs"]]


def test_fused_denoiser_is_listed_and_uses_one_attention_node_per_attention(tiny_bundle):
    import collections

    import onnx

    den = _manifest(tiny_bundle)["stages"]["denoiser"]
    assert den["fused"] == {"fp32": "denoiser.fused.onnx"}
    ops = collections.Counter((n.domain, n.op_type) for n in onnx.load(str(tiny_bundle / "denoiser.fused.onnx")).graph.node)
    assert ops[("com.microsoft", "Attention")] == 2 * 2  # depth 2, temporal + spatial attention
    assert ops[("", "Softmax")] == 0 and ops[("", "Gelu")] == 2  # opset 20 Gelu, fused by onnxruntime with its bias
    plain = collections.Counter(n.op_type for n in onnx.load(str(tiny_bundle / "denoiser.onnx")).graph.node)
    assert plain["Softmax"] == 4 and not any(n.domain for n in onnx.load(str(tiny_bundle / "denoiser.onnx")).graph.node)


def test_both_denoiser_graphs_keep_their_weights_in_one_shared_file(tiny_bundle, tiny_models):
    """Every weight is stored once: both graphs point into denoiser.data, which holds no more than the weights."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    from vdt_export.bundle import external_data_files
    from vdt_export.shared_weights import INLINE_BYTES

    weights = sum(p.numel() * p.element_size() for p in tiny_models[0].parameters())
    data = (tiny_bundle / "denoiser.data").stat().st_size
    assert weights <= data < 1.1 * weights
    for name in ("denoiser.onnx", "denoiser.fused.onnx"):
        assert external_data_files(tiny_bundle / name) == ["denoiser.data"]
        model = onnx.load(str(tiny_bundle / name), load_external_data=False)
        inline = sum(len(t.raw_data) for t in model.graph.initializer if not uses_external_data(t))
        assert all(len(t.raw_data) < INLINE_BYTES for t in model.graph.initializer if not uses_external_data(t))
        assert inline < 0.05 * weights


def test_sharing_is_by_content_and_keeps_a_tensor_only_one_graph_has(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from vdt_export.shared_weights import share_weights

    rng = np.random.default_rng(0)
    w, only = rng.standard_normal((32, 16)).astype(np.float32), rng.standard_normal((16, 16)).astype(np.float32)

    def graph(name, inits):
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16])
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h" if len(inits) > 1 else "y"])]
        if len(inits) > 1:
            nodes.append(helper.make_node("MatMul", ["h", "v"], ["y"]))
        g = helper.make_graph(nodes, name, [x], [y], [numpy_helper.from_array(a, n) for n, a in inits.items()])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
        return path

    a, b = graph("a", {"w": w}), graph("b", {"w": w.copy(), "v": only})
    report = share_weights([a, b], "shared.data")
    assert report.graph_bytes == {"a.onnx": w.nbytes, "b.onnx": w.nbytes + only.nbytes}
    assert report.saved_bytes >= w.nbytes and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.onnx", "b.onnx", "shared.data"]
    feed = {"x": rng.standard_normal((1, 32)).astype(np.float32)}
    got = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, feed["x"] @ w @ only, rtol=1e-5, atol=1e-5)


def test_export_without_fused_graph(tiny_models, tmp_path):
    vdt, vae = tiny_models
    out = export_bundle(vdt, vae, tmp_path / "plain", name="plain", image_size=16, fused=False)
    m = _manifest(out)
    assert "fused" not in m["stages"]["denoiser"] and "denoiser.fused.onnx" not in m["files"]
    from vdt_runtime import Pipeline

    assert Pipeline.load(out, backend="cpu").graphs["denoiser"] == "standard"  # bundles without one still load


def test_write_manifest_adds_a_new_file(tiny_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "copy"
    shutil.copytree(tiny_bundle, bundle)
    manifest = _manifest(bundle)
    shutil.copy(bundle / "vae_decoder.onnx", bundle / "denoiser.int8.onnx")  # stands in for a quantised file
    manifest["stages"]["denoiser"]["files"]["int8"] = "denoiser.int8.onnx"
    write_manifest(bundle, manifest)
    files = _manifest(bundle)["files"]
    assert files["denoiser.int8.onnx"] == files["vae_decoder.onnx"]
    assert files["denoiser.onnx"] == _manifest(tiny_bundle)["files"]["denoiser.onnx"]
    manifest["stages"]["denoiser"]["files"]["fp16"] = "absent.onnx"
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        write_manifest(bundle, manifest)


def test_max_frames_copy_leaves_the_callers_model(tiny_models):
    from vdt_export.bundle import _with_max_frames

    vdt, _ = tiny_models
    assert _with_max_frames(vdt, None) is vdt and _with_max_frames(vdt, 8) is vdt
    longer = _with_max_frames(vdt, 12)
    assert (longer.max_frames, vdt.max_frames) == (12, 8)
    latents, t = torch.randn(1, 8, 4, 8, 8), torch.tensor([10.0])
    with torch.no_grad():
        assert torch.equal(longer(latents, t), vdt(latents, t))  # same weights, same first 8 rows


def test_failed_export_keeps_the_old_bundle(tiny_models, tiny_bundle, tmp_path):
    import shutil

    vdt, vae = tiny_models
    out = tmp_path / "keep"
    shutil.copytree(tiny_bundle, out)
    before = _manifest(out)
    with pytest.raises(InputError, match="image_size=32"):
        export_bundle(vdt, vae, out, name="keep", image_size=32)
    with pytest.raises(InputError, match="max_frames=4"):
        export_bundle(vdt, vae, out, name="keep", image_size=16, max_frames=4)
    assert _manifest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_diffusion_config_is_validated():
    assert diffusion_config(False)["variance_type"] == "fixed_small"
    with pytest.raises(InputError, match="prediction_type='x0'"):
        diffusion_config(True, {"prediction_type": "x0"})
    with pytest.raises(InputError, match="variance_type='fixed_small' does not fit"):
        diffusion_config(True, {"variance_type": "fixed_small"})


def test_external_data_file_is_hashed_and_loads(tiny_models, tmp_path):
    """Past 2 GB the weights go to one `.data` file; forced here on the tiny model."""
    import numpy as np

    from vdt_export.bundle import external_data_files
    from vdt_export.onnx_export import export_denoiser

    vdt, _ = tiny_models
    path = export_denoiser(vdt, tmp_path / "denoiser.onnx", external_data=True)
    data = external_data_files(path)
    assert len(data) == 1 and (tmp_path / data[0]).stat().st_size > 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["denoiser.onnx", data[0]])
    write_manifest(tmp_path, {"stages": {"denoiser": {"files": {"fp32": "denoiser.onnx"}}}})
    assert sorted(_manifest(tmp_path)["files"]) == sorted(["denoiser.onnx", data[0]])
    latents = np.random.default_rng(1).standard_normal((2, 5, 4, 8, 8)).astype(np.float32)
    timestep = np.array([1.0, 900.0], np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"latents": latents, "timestep": timestep})
    with torch.no_grad():
        want = vdt(torch.from_numpy(latents), torch.from_numpy(timestep)).numpy()
    assert np.abs(got - want).max() <= 1e-4
