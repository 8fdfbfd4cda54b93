"""Catalogue of bad inputs: each gets its typed error, and the message names the value and what is allowed.

docs/errors.md holds the same catalogue as a table; `test_docs_table_matches_catalogue` keeps the two in step.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from vdt_runtime import Pipeline, write_video
from vdt_runtime.bundle import Bundle, sha256_file
from vdt_runtime.errors import BackendError, BundleError, InputError
from vdt_runtime.video import read_mask

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    id: str
    error: str  # class name: InputError, BundleError, BackendError, CheckpointError
    fragments: tuple[str, ...]  # must all appear in the message (and in the docs table's example)
    action: Callable  # (ctx) -> anything; must raise


class Ctx:
    """What a case may use: a loaded pipeline, a clip, a scratch folder, bundle copies, the tiny torch models."""

    def __init__(self, request, pipe, tiny_bundle, tmp_path):
        self.request, self.pipe, self.bundle, self.tmp = request, pipe, tiny_bundle, tmp_path
        self.clip = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)

    def predict(self, frames=None, **kw):
        kw = {"cond": 2, "total": 4, "steps": 1, **kw}
        return self.pipe.predict(self.clip if frames is None else frames, **kw)

    def run_mask(self, mask, **kw):
        return self.pipe.run(self.clip[:4], mask=mask, steps=1, **kw)

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def bundle_copy(self, edit=None) -> Path:
        """A private copy of the tiny bundle; `edit(manifest, folder)` may change the manifest and files."""
        path = Path(shutil.copytree(self.bundle, self.tmp / "bundle"))
        if edit is not None:
            manifest = json.loads((path / "manifest.json").read_text())
            edit(manifest, path)
            (path / "manifest.json").write_text(json.dumps(manifest))
        return path

    def state_dict(self) -> dict:
        vdt, _ = self.request.getfixturevalue("tiny_models")
        return dict(vdt.state_dict())


def _relist(manifest: dict, folder: Path, name: str) -> None:
    """Make manifest["files"][name] match the file on disk (as a careless re-packer would)."""
    manifest["files"][name] = {"sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size}


def _truncated_decoder(m: dict, folder: Path) -> None:
    data = (folder / "vae_decoder.onnx").read_bytes()
    (folder / "vae_decoder.onnx").write_bytes(data[: len(data) // 2])  # cut mid-tensor
    _relist(m, folder, "vae_decoder.onnx")


def _swap_denoiser_for_encoder(m: dict, folder: Path) -> None:
    shutil.copyfile(folder / "vae_encoder.onnx", folder / "denoiser.onnx")
    _relist(m, folder, "denoiser.onnx")


def _garbage_denoiser(m: dict, folder: Path, name: str = "denoiser.onnx") -> None:
    (folder / name).write_bytes(b"this is not an onnx protobuf" * 10)
    _relist(m, folder, name)


def _garbage_fused_denoiser(m: dict, folder: Path) -> None:
    _garbage_denoiser(m, folder, m["stages"]["denoiser"]["fused"]["fp32"])


def _symlink_out(m: dict, folder: Path) -> None:
    outside = folder.parent / "elsewhere.onnx"
    shutil.move(folder / "vae_decoder.onnx", outside)
    (folder / "vae_decoder.onnx").symlink_to(outside)


def _external_unlisted(m: dict, folder: Path, location: str = "weights.data") -> None:
    """The denoiser's weights moved to an external data file at `location`, which the manifest does not list."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(folder / "denoiser.onnx"))
    onnx.save_model(model, str(folder / "denoiser.onnx"), save_as_external_data=True, location="weights.data",
                    size_threshold=0)
    if location != "weights.data":  # rewrite the recorded location (what a hostile bundle would do)
        model = onnx.load(str(folder / "denoiser.onnx"), load_external_data=False)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(folder / "denoiser.onnx"))
    _relist(m, folder, "denoiser.onnx")


def _eight_channels(m: dict, folder: Path) -> None:
    """A manifest consistent in itself (8 latent channels everywhere) that the graphs (4 channels) contradict."""
    m["model"]["in_channels"] = m["vae"]["latent_channels"] = 8
    stages = m["stages"]
    stages["denoiser"]["inputs"][0]["shape"][2] = 8
    stages["denoiser"]["outputs"][0]["shape"][2] = 16
    stages["vae_encoder"]["outputs"][0]["shape"][1] = stages["vae_decoder"]["inputs"][0]["shape"][1] = 8


def _downsample_four(m: dict, folder: Path) -> None:
    """vae.downsample 4 (image 32) in a manifest consistent in itself; the VAE graphs state 2."""
    m["vae"]["downsample"], m["image_size"] = 4, 32
    for stage in ("vae_encoder", "vae_decoder"):
        for axis in ("height", "width"):
            m["stages"][stage]["dynamic_axes"].setdefault(axis, {"min": 4, "opt": 32, "max": 32}).update(max=32, opt=32)


def _write_manifest_text(folder: Path, text: str) -> Path:
    (folder / "manifest.json").write_text(text)
    return folder


def _folder_with(folder: Path, name: str) -> Path:
    folder.mkdir()
    (folder / name).write_text("mine")
    return folder


def _truncated_video(ctx: Ctx):
    """An 8-frame mkv cut to 60 %: its header still states 8 frames; ffmpeg decodes fewer without an error."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(ctx.tmp / "full.mkv"), (16, 16), fps=8, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for frame in ctx.clip:
        writer.send(frame)
    writer.close()
    data = (ctx.tmp / "full.mkv").read_bytes()
    cut = ctx.file("cut.mkv", data[: len(data) * 6 // 10])
    return ctx.pipe.inpaint(cut, box=(0, 0, 8, 8), steps=1)


def _tamper(path: Path) -> Path:
    target = path / "denoiser.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    target.write_bytes(bytes(data))
    return path


def _unwritable_folder(tmp: Path) -> Path:
    """A folder this process cannot create files in (a 0555 folder; as root, which ignores modes, /sys)."""
    for folder in (tmp / "read-only", Path("/sys")):
        if folder.parent == tmp:
            folder.mkdir(exist_ok=True)
            folder.chmod(0o555)
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no folder here refuses writes (running as root without a read-only mount)")


def _gif(ctx: Ctx, frames: int) -> Path:
    return write_video(ctx.tmp / "short.gif", ctx.clip[:frames])


def _ort_options(choice: str, **options):
    from vdt_runtime.backends.base import check_options
    from vdt_runtime.backends.ort import OrtBackend

    return check_options(choice, options, OrtBackend)


def _engine_json_not_object(ctx: Ctx):
    """A cached engine whose .json beside it holds a list, found by a load that may not build."""
    from vdt_runtime.backends import trt_engines as te

    bundle, device = Bundle.load(ctx.bundle), te.Device("NVIDIA H100", (9, 0), "10.13.0.35")
    spec = te.build_spec(bundle, "denoiser", "fp32")
    te.write_engine(ctx.tmp, spec, device, b"plan").with_suffix(".json").write_text("[1, 2]")
    return te.ensure_engine(bundle, spec, device, ctx.tmp, build=False)


def _without_gpu(ctx: Ctx, backend: str):
    """Load on a GPU backend where onnxruntime-gpu offers its providers and the driver reports no GPU (as here)."""
    from vdt_runtime.backends import ort as ort_backend

    monkeypatch = ctx.request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(ort_backend, "available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_backend, "nvidia_gpus", lambda: 0)
    return Pipeline.load(ctx.bundle, backend=backend)


def _load_vdt(ctx: Ctx, state, config=None):
    pytest.importorskip("torch")
    from vdt_export.checkpoint import load_vdt

    return load_vdt(state, config)


def _corrupt_data(m: dict, folder: Path) -> None:
    """Flip one byte of the denoiser weights, keeping the size (only the sha256 can tell)."""
    data = bytearray((folder / "denoiser.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "denoiser.data").write_bytes(bytes(data))


def _quantize(path: Path):
    pytest.importorskip("onnxruntime.quantization")
    from vdt_export.quantize import quantize_bundle

    return quantize_bundle(path)


def _export_inside_bundle(ctx: Ctx):
    pytest.importorskip("torch")
    from vdt_export.bundle import export_bundle

    vdt, vae = ctx.request.getfixturevalue("tiny_models")
    return export_bundle(vdt, vae, ctx.bundle_copy() / "nested", name="nested", image_size=16)


def _fp16_of_other_weights(ctx: Ctx):
    pytest.importorskip("torch")
    from vdt_export.fp16 import add_fp16
    from vdt_export.models import VDT
    from vdt_export.sources import randomize_

    vdt, _ = ctx.request.getfixturevalue("tiny_models")
    return add_fp16(ctx.bundle_copy(), randomize_(VDT(vdt.config), 5))  # same config, other weights


def _pickled_checkpoint(ctx: Ctx):
    torch = pytest.importorskip("torch")
    from vdt_export.checkpoint import load_state_dict

    path = ctx.tmp / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    return load_state_dict(path)


def _truncated_checkpoint(ctx: Ctx):
    torch = pytest.importorskip("torch")
    from vdt_export.checkpoint import load_state_dict

    full = ctx.tmp / "full.pt"
    torch.save({"weight": torch.zeros(64)}, full)
    return load_state_dict(ctx.file("cut.pt", full.read_bytes()[:200]))


class _Payload:
    """An arbitrary object: unpickling it would run __reduce__'s callable."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def _checkpoint(ctx: Ctx, name: str):
    pytest.importorskip("torch")
    from vdt_export.checkpoint import load_state_dict

    return load_state_dict(ctx.file(name, b"\0" * 16))


def _without(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


def _with_extra(state: dict, key: str) -> dict:
    return {**state, key: next(iter(state.values()))}


def _floats(n_bad: int, value: float) -> np.ndarray:
    """Float frames [4, 16, 16, 3] of 0.5 whose first `n_bad` values are `value`."""
    frames = np.full((4, 16, 16, 3), 0.5, np.float32)
    frames.reshape(-1)[:n_bad] = value
    return frames


def _malformed(c: Ctx) -> Path:
    path = c.bundle_copy()
    (path / "manifest.json").write_text('{"format": "vdt-bundle", "format_version": 1,,}')
    return path


def _request(c, **kw):
    from vdt_runtime import Request

    return Request(**{"task": "predict", "frames": c.clip[:2], "steps": 1, **kw})


def _generate_params(c, **params):
    from vdt_runtime import Request

    return c.pipe.generate([Request.from_params({"steps": 1, **params}, frames=c.clip[:4])])


def _forged_npy(c) -> Path:
    """A .npy whose header claims 8e14 bytes of float64, followed by 64 bytes (np.load: MemoryError)."""
    import io

    header = np.lib.format.header_data_from_array_1_0(np.ones((4, 8, 8)))
    header["shape"] = (10**6, 10**6, 100)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return c.file("forged.npy", buf.getvalue() + b"\0" * 64)


def _npz_named_npy(c) -> Path:
    np.savez(c.tmp / "m.npz", mask=np.ones((4, 8, 8)))
    return Path(shutil.copyfile(c.tmp / "m.npz", c.tmp / "m.npy"))


def _cropping_decoder(c):
    """A pipeline whose decoder answers a pixel short of the manifest's size (as a mis-exported graph would)."""
    pipe = Pipeline.load(c.bundle, backend="cpu", options={"threads": 1})
    run = pipe.backends["vae_decoder"].run
    pipe.backends["vae_decoder"].run = lambda feed: {k: v[..., :-1, :-1] for k, v in run(feed).items()}
    return pipe


CASES = [
    # --- frames --------------------------------------------------------------------------------------
    Case("frames-no-time-axis", "InputError", ("[T, H, W, 3]", "(16, 16, 3)"),
         lambda c: c.predict(c.clip[0])),
    Case("frames-dtype-int16", "InputError", ("uint8", "[0, 1]", "int16"),
         lambda c: c.predict(c.clip.astype(np.int16))),
    Case("frames-4-channels", "InputError", ("[T, H, W, 3]", "(4, 16, 16, 4)"),
         lambda c: c.predict(np.zeros((4, 16, 16, 4), np.uint8))),
    Case("frames-wrong-size", "InputError", ("32x32", "16x16"),
         lambda c: c.predict(np.zeros((4, 32, 32, 3), np.uint8))),
    Case("frames-mixed-sizes", "InputError", ("mixed shapes", "(16, 16, 3)", "(8, 8, 3)", "H = W = 16"),
         lambda c: c.predict([c.clip[0], np.zeros((8, 8, 3), np.uint8)])),
    Case("frames-empty", "InputError", ("T = 0",),
         lambda c: c.predict(np.zeros((0, 16, 16, 3), np.uint8))),
    Case("frames-nan", "InputError", ("768 NaN or Inf", "finite", "[0, 1]"),
         lambda c: c.predict(_floats(768, np.nan))),
    Case("frames-inf", "InputError", ("1 NaN or Inf", "finite"),
         lambda c: c.predict(_floats(1, np.inf))),
    Case("frames-float-out-of-range", "InputError", ("[0, 1]", "[0.5, 2]"),
         lambda c: c.predict(_floats(1, 2.0))),
    # --- video files ---------------------------------------------------------------------------------
    Case("video-empty-file", "InputError", ("empty.mp4", "0 bytes"),
         lambda c: c.predict(c.file("empty.mp4", b""))),
    Case("video-corrupt-file", "InputError", ("junk.mp4", "corrupt or not a .mp4 file"),
         lambda c: c.predict(c.file("junk.mp4", b"not a video" * 50))),
    Case("video-missing-file", "InputError", ("nope.mp4", "does not exist"),
         lambda c: c.predict(c.tmp / "nope.mp4")),
    Case("video-wrong-size", "InputError", ("big.gif", "is 32x32 pixels", "takes 16x16"),
         lambda c: c.predict(write_video(c.tmp / "big.gif", np.zeros((3, 32, 32, 3), np.uint8)))),
    Case("video-truncated", "InputError", ("cut.mkv", "truncated or corrupt", "decoded", "header states"),
         _truncated_video),
    Case("video-unknown-extension", "InputError", ("'.avi'", ".mp4, .webm"),
         lambda c: c.predict(c.file("clip.avi", b"RIFF"))),
    Case("video-shorter-than-cond", "InputError", ("cond=4", "needs 4 input frame(s)", "got 2"),
         lambda c: c.predict(_gif(c, 2), cond=4, total=6)),
    # --- lengths -------------------------------------------------------------------------------------
    Case("total-above-max-frames", "InputError", ("total=9", "max_frames=8", "rollout"),
         lambda c: c.predict(total=9)),
    Case("cond-equals-total", "InputError", ("cond", "1..3", "got 4"),
         lambda c: c.predict(cond=4, total=4)),
    Case("cond-zero", "InputError", ("cond", "1..3", "got 0"),
         lambda c: c.predict(cond=0)),
    Case("total-not-an-integer", "InputError", ("total", "integer", "'4'"),
         lambda c: c.predict(total="4")),
    Case("stride-one", "InputError", ("stride", ">= 2", "got 1"),
         lambda c: c.pipe.interpolate(c.clip[:3], stride=1, steps=1)),
    Case("given-index-out-of-range", "InputError", ("given index", "0..3", "got 9"),
         lambda c: c.pipe.complete(c.clip[:1], given=[9], total=4, steps=1)),
    Case("box-outside-image", "InputError", ("(0, 0, 99, 99)", "y1 <= 16"),
         lambda c: c.pipe.inpaint(c.clip[:2], box=(0, 0, 99, 99), steps=1)),
    Case("positions-duplicate", "InputError", ("given names frame position(s) [2] more than once",),
         lambda c: c.pipe.complete(c.clip[:2], given=[2, 2], total=4, steps=1)),
    Case("positions-empty", "InputError", ("given is empty", "at least one frame position"),
         lambda c: c.pipe.complete(c.clip[:2], given=[], total=4, steps=1)),
    Case("rollout-over-in-memory-cap", "InputError", ("total=1025", "maximum 1024 returned in memory",
                                                      "rollout_stream"),
         lambda c: c.pipe.rollout(c.clip, total=1025, cond=2, steps=1)),
    Case("box-negative-parameter", "InputError", ("box coordinate", "got -1"),
         lambda c: _generate_params(c, task="inpaint", box="-1,0,8,8")),
    Case("parameter-not-an-integer", "InputError", ("parameter 'total'", "integer", "'4.5'"),
         lambda c: _generate_params(c, task="predict", total="4.5")),
    # --- requests ------------------------------------------------------------------------------------
    Case("generate-none", "InputError", ("generate takes a list of Requests", "got None"),
         lambda c: c.pipe.generate(None)),
    Case("requests-index", "InputError", ("requests[1]: ", "total=9", "max_frames=8"),
         lambda c: c.pipe.generate([_request(c, total=4), _request(c, total=9)])),
    # --- masks ---------------------------------------------------------------------------------------
    Case("mask-npy-forged-header", "InputError", ("forged.npy", "header claims shape (1000000, 1000000, 100)",
                                                  "holds 64 bytes"),
         lambda c: read_mask(_forged_npy(c))),
    Case("mask-npz-as-npy", "InputError", ("m.npy", "it is an .npz archive", "numpy.save"),
         lambda c: read_mask(_npz_named_npy(c))),
    Case("mask-npz-suffix", "InputError", ("m.npz", "must be a .npy file"),
         lambda c: read_mask(c.file("m.npz", b"PK\x03\x04"))),
    Case("mask-wrong-spatial-size", "InputError", ("(5, 5)", "latent (8, 8)", "image (16, 16)"),
         lambda c: c.run_mask(np.ones((4, 5, 5)))),
    Case("mask-wrong-frame-count", "InputError", ("T = total = 4", "(3, 8, 8)"),
         lambda c: c.run_mask(np.ones((3, 8, 8)), total=4)),
    Case("mask-all-given", "InputError", ("gives every frame", "nothing to generate"),
         lambda c: c.run_mask(np.zeros((4, 8, 8)))),
    Case("mask-non-binary", "InputError", ("0 (given) or 1 (generate)", "[0.5]"),
         lambda c: c.run_mask(np.full((4, 8, 8), 0.5))),
    Case("mask-nan", "InputError", ("NaN", "0 (given) or 1 (generate)"),
         lambda c: c.run_mask(np.full((4, 8, 8), np.nan))),
    Case("mask-ragged-list", "InputError", ("mask", "mixed shapes", "[T, h, w]"),
         lambda c: c.run_mask([np.ones((8, 8)), np.ones((8, 4))])),
    Case("mask-batch-of-two", "InputError", ("mask batch must be 1", "got 2"),
         lambda c: c.run_mask(np.ones((2, 4, 8, 8)))),
    Case("mask-with-task", "InputError", ("user mask replaces the task", "drop task='predict'"),
         lambda c: c.run_mask(np.ones((4, 8, 8)), task="predict")),
    # --- sampling settings ---------------------------------------------------------------------------
    Case("steps-zero", "InputError", ("steps", "1..1000", "got 0"), lambda c: c.predict(steps=0)),
    Case("steps-negative", "InputError", ("steps", "1..1000", "got -3"), lambda c: c.predict(steps=-3)),
    Case("steps-above-schedule", "InputError", ("steps", "1..1000", "got 5000"), lambda c: c.predict(steps=5000)),
    Case("steps-float", "InputError", ("steps", "integer", "2.5"), lambda c: c.predict(steps=2.5)),
    Case("unknown-sampler", "InputError", ("'euler'", "ddpm, ddim, dpmpp"), lambda c: c.predict(sampler="euler")),
    Case("eta-with-ddpm", "InputError", ("eta=0.3", "'ddim'", "'dpmpp'", "'ddpm'"), lambda c: c.predict(eta=0.3)),
    Case("eta-negative", "InputError", ("eta", ">= 0", "-1"), lambda c: c.predict(sampler="ddim", eta=-1.0)),
    Case("eta-nan", "InputError", ("eta", "finite", "nan"), lambda c: c.predict(sampler="dpmpp", eta=float("nan"))),
    Case("unknown-task", "InputError", ("'zoom'", "predict, backward"),
         lambda c: c.pipe.run(c.clip, task="zoom", total=4, steps=1)),
    Case("seed-negative", "InputError", ("seed", "0..2**63-1", "-1"), lambda c: c.predict(seed=-1)),
    Case("seed-huge", "InputError", ("seed", "0..2**63-1", "18446744073709551616"), lambda c: c.predict(seed=2**64)),
    Case("seed-float", "InputError", ("seed", "integer", "1.5"), lambda c: c.predict(seed=1.5)),
    # --- loading -------------------------------------------------------------------------------------
    Case("unknown-backend", "InputError", ("'vulkan'", "auto, cpu, cuda, ort-tensorrt"),
         lambda c: Pipeline.load(c.bundle, backend="vulkan")),
    Case("backend-not-a-string", "InputError", ("['cpu']", "auto, cpu, cuda, ort-tensorrt"),
         lambda c: Pipeline.load(c.bundle, backend=["cpu"])),
    Case("gpu-backend-without-gpu", "BackendError", ("backend 'cuda' is not available here",
                                                    "offers CUDAExecutionProvider", "no NVIDIA GPU"),
         lambda c: _without_gpu(c, "cuda")),
    Case("unknown-precision", "InputError", ("'int4'", "fp32, fp16, bf16, int8"),
         lambda c: Pipeline.load(c.bundle, precision="int4")),
    Case("threads-zero", "InputError", ("threads", "1..256", "got 0"),
         lambda c: Pipeline.load(c.bundle, backend="cpu", options={"threads": 0})),
    Case("precision-backend-cannot-run", "InputError", ("backend 'cpu'", "precision 'fp16'", "it runs: fp32"),
         lambda c: Pipeline.load(c.bundle, backend="cpu", precision="fp16")),
    Case("option-unknown", "InputError", ("'cpu'", "'cache_dir'", "threads, graph_optimization, spinning, fused"),
         lambda c: Pipeline.load(c.bundle, backend="cpu", options={"cache_dir": "/tmp"})),
    Case("threads-huge", "InputError", ("threads", "1..256", "got 100000"),
         lambda c: Pipeline.load(c.bundle, backend="cpu", options={"threads": 100000})),
    # --- outputs -------------------------------------------------------------------------------------
    Case("output-folder-missing", "InputError", ("nodir", "does not exist"),
         lambda c: write_video(c.tmp / "nodir" / "out.mp4", c.clip)),
    Case("output-folder-not-writable", "InputError", ("not writable",),
         lambda c: write_video(_unwritable_folder(c.tmp) / "out.gif", c.clip)),
    Case("output-folder-holds-other-files", "InputError", ("mine", "'notes.txt'", "did not write", "new or empty"),
         lambda c: write_video(_folder_with(c.tmp / "mine", "notes.txt"), c.clip)),
    Case("output-file-over-folder", "InputError", ("out.gif", "exists and is a folder", "regular file"),
         lambda c: write_video(_folder_with(c.tmp / "out.gif", "x"), c.clip)),
    Case("output-is-input", "InputError", ("in.gif", "is the input", "never overwrites"),
         lambda c: write_video(c.tmp / "in.gif", c.clip, protect={"input": c.tmp / "in.gif"})),
    Case("output-inside-bundle", "InputError", ("lies inside the bundle",),
         lambda c: write_video(c.bundle / "out.mp4", c.clip, protect={"bundle": c.bundle})),
    Case("output-fps-zero", "InputError", ("fps", "[0.01, 1000]", "got 0"),
         lambda c: write_video(c.tmp / "out.gif", c.clip, fps=0)),
    Case("output-fps-tiny", "InputError", ("fps", "[0.01, 1000]", "100 s a frame", "got 0.001"),
         lambda c: write_video(c.tmp / "out.gif", c.clip, fps=0.001)),
    Case("decoder-output-size", "BundleError", ("stage vae_decoder returned shape (2, 3, 15, 15)",
                                                "manifest declares (2, 3, 16, 16)"),
         lambda c: _cropping_decoder(c).predict(c.clip[:2], total=4, steps=1)),
    Case("output-unknown-extension", "InputError", ("'.avi'", ".mp4, .webm, .gif"),
         lambda c: write_video(c.tmp / "out.avi", c.clip)),
    Case("output-frames-not-uint8", "InputError", ("uint8 [T, H, W, 3]", "float64"),
         lambda c: write_video(c.tmp / "out.gif", c.clip / 255.0)),
    # --- bundles -------------------------------------------------------------------------------------
    Case("bundle-folder-missing", "BundleError", ("nope", "does not exist", "manifest.json"),
         lambda c: Bundle.load(c.tmp / "nope")),
    Case("bundle-file-missing", "BundleError", ("'vae_encoder.onnx'", "missing"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: (p / "vae_encoder.onnx").unlink()))),
    Case("bundle-file-tampered", "BundleError", ("'denoiser.onnx'", "hash check", "expected sha256"),
         lambda c: Pipeline.load(_tamper(c.bundle_copy()), verify=True)),
    Case("bundle-file-size-changed", "BundleError", ("'denoiser.onnx'", "bytes", "manifest says"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["files"]["denoiser.onnx"].update(size=1)))),
    Case("bundle-format-version", "BundleError", ("format_version 7", "supports format_version 1"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m.update(format_version=7)))),
    Case("bundle-malformed-json", "BundleError", ("not valid JSON", "line 1 column"),
         lambda c: Bundle.load(_malformed(c))),
    Case("bundle-missing-key", "BundleError", ("model is missing", "max_frames"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["model"].pop("max_frames")))),
    Case("bundle-stage-spec-malformed", "BundleError", ("stages.denoiser.inputs", "non-empty list", "5"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["stages"]["denoiser"].update(inputs=5)))),
    Case("bundle-file-outside-folder", "BundleError", ("'../evil.onnx'", "relative path"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["files"].update({"../evil.onnx": {"sha256": "0"}})))),
    Case("bundle-onnx-io-mismatch", "BundleError", ("denoiser.onnx", "('images', 'float32')",
                                                    "manifest declares", "('latents', 'float32')"),
         lambda c: Pipeline.load(c.bundle_copy(_swap_denoiser_for_encoder), backend="cpu",
                               options={"fused": False})),
    Case("bundle-onnx-unreadable", "BundleError", ("denoiser.onnx", "not a readable ONNX model"),
         lambda c: Bundle.load(c.bundle_copy(_garbage_denoiser))),
    Case("bundle-fused-unreadable", "BundleError", ("denoiser.fused.onnx", "not a readable ONNX model"),
         lambda c: Bundle.load(c.bundle_copy(_garbage_fused_denoiser))),
    Case("bundle-graph-truncated", "BundleError", ("vae_decoder.onnx", "not a readable ONNX model", "past the end"),
         lambda c: Bundle.load(c.bundle_copy(_truncated_decoder))),
    Case("bundle-symlink-out", "BundleError", ("'vae_decoder.onnx'", "outside the bundle folder", "symlinks"),
         lambda c: Bundle.load(c.bundle_copy(_symlink_out))),
    Case("bundle-external-data-unlisted", "BundleError", ("denoiser.onnx", "'weights.data'", "do not list"),
         lambda c: Bundle.load(c.bundle_copy(_external_unlisted))),
    Case("bundle-external-data-outside", "BundleError", ("denoiser.onnx", "'../weights.data'", "outside the bundle"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: _external_unlisted(m, p, "../weights.data")))),
    Case("bundle-batch-max-string", "BundleError", ("max must be an integer", "1..65536", "'16'"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["stages"]["denoiser"]["dynamic_axes"]["batch"].update(
             max="16")))),
    Case("bundle-batch-max-negative", "BundleError", ("max must be in 1..65536", "got -1"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["stages"]["vae_decoder"]["dynamic_axes"]["batch"].update(
             max=-1)))),
    Case("bundle-timesteps-string", "BundleError", ("diffusion.num_timesteps", "integer in 2..100000", "'1000'"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["diffusion"].update(num_timesteps="1000")))),
    Case("bundle-frames-axis-above-model", "BundleError", ("dynamic_axes.frames.max is 16", "model.max_frames is 8"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["stages"]["denoiser"]["dynamic_axes"]["frames"].update(
             max=16)))),
    Case("bundle-channels-differ-from-graph", "BundleError", ("'latents' dim 2 is 4", "the manifest says 8"),
         lambda c: Bundle.load(c.bundle_copy(_eight_channels))),
    Case("bundle-downsample-differs-from-graph", "BundleError", ("'2*latent_height'", "vae.downsample is 4"),
         lambda c: Bundle.load(c.bundle_copy(_downsample_four))),
    Case("bundle-manifest-too-large", "BundleError", ("manifest.json", "larger than 1048576 bytes"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m.update(padding="x" * (1 << 20))))),
    Case("bundle-manifest-deeply-nested", "BundleError", ("manifest.json", "nests JSON too deeply"),
         lambda c: Bundle.load(_write_manifest_text(c.bundle_copy(), "[" * 100_000 + "]" * 100_000))),
    Case("bundle-huge-value-cut", "BundleError", ("format is 'xxxx", "(100002 characters)"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m.update(format="x" * 100_000)))),
    Case("bundle-fused-unknown-precision", "BundleError", ("stages.denoiser.fused", "'fp16'", "['fp32']"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m["stages"]["denoiser"]["fused"].update(fp16="x.onnx")))),
    Case("bundle-sampling-invalid", "BundleError", ("sampling", "unknown sampler 'euler'"),
         lambda c: Bundle.load(c.bundle_copy(lambda m, p: m.update(sampling={"sampler": "euler", "steps": 10})))),
    Case("fused-not-bool", "InputError", ("fused", "True or False", "'yes'"),
         lambda c: Pipeline.load(c.bundle, backend="cpu", options={"fused": "yes"})),
    # --- export commands that amend or write bundles (vdt_export) --------------------------------------
    Case("quantize-corrupt-bundle", "BundleError", ("'denoiser.data'", "hash check"),
         lambda c: _quantize(c.bundle_copy(lambda m, p: _corrupt_data(m, p)))),
    Case("quantize-fused-unreadable", "BundleError", ("denoiser.fused.onnx", "not a readable ONNX model"),
         lambda c: _quantize(c.bundle_copy(_garbage_fused_denoiser))),
    Case("fp16-other-weights", "InputError", ("fp16 denoiser", "fp16 rounding allows 1% / 5%",
                                              "not the weights the bundle was exported from"),
         _fp16_of_other_weights),
    Case("export-out-inside-bundle", "InputError", ("nested", "lies inside bundle"), _export_inside_bundle),
    Case("option-value-unknown", "InputError", ("graph_optimization must be one of", "disable, basic, extended, all", "'max'"),
         lambda c: Pipeline.load(c.bundle, backend="cpu", options={"graph_optimization": "max"})),
    Case("cuda-graph-without-binding", "InputError", ("cuda_graph needs io_binding",),
         lambda c: _ort_options("cuda", cuda_graph=True, io_binding=False)),
    Case("engine-json-not-object", "BackendError", ("no usable TensorRT engine", "is not a JSON object"),
         lambda c: _engine_json_not_object(c)),
    # --- checkpoints (vdt_export) --------------------------------------------------------------------
    Case("checkpoint-other-config", "CheckpointError", ("VDT-S/2", "depth=12", "depth=2"),
         lambda c: _load_vdt(c, c.state_dict(), "VDT-S/2")),
    Case("checkpoint-missing-key", "CheckpointError", ("missing ['blocks.1.temporal_fc.bias']",),
         lambda c: _load_vdt(c, _without(c.state_dict(), "blocks.1.temporal_fc.bias"))),
    Case("checkpoint-extra-key", "CheckpointError", ("unexpected ['blocks.0.attn.q_norm.weight']",),
         lambda c: _load_vdt(c, _with_extra(c.state_dict(), "blocks.0.attn.q_norm.weight"))),
    Case("checkpoint-not-vdt", "CheckpointError", ("no 'x_embedder.proj.weight'", "VDT state_dict"),
         lambda c: _load_vdt(c, {"linear.weight": next(iter(c.state_dict().values()))})),
    Case("checkpoint-pickled-object", "CheckpointError", ("evil.pt", "weights_only=True", "Unsupported global",
                                                          "arbitrary pickled objects are refused"),
         _pickled_checkpoint),
    Case("checkpoint-truncated", "CheckpointError", ("cut.pt", "weights_only=True", "corrupted"),
         _truncated_checkpoint),
    Case("checkpoint-unknown-suffix", "CheckpointError", ("'.npz'", ".pt, .pth"),
         lambda c: _checkpoint(c, "weights.npz")),
]


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    return tiny_pipeline


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_typed_error_naming_value_and_allowed(case, request, pipe, tiny_bundle, tmp_path):
    ctx = Ctx(request, pipe, tiny_bundle, tmp_path)
    with pytest.raises(Exception) as err:
        case.action(ctx)
    assert type(err.value).__name__ == case.error, f"{case.id}: {type(err.value).__name__}: {err.value}"
    message = str(err.value)
    for fragment in case.fragments:
        assert fragment in message, f"{case.id}: {fragment!r} not in {message!r}"
    assert "Traceback" not in message and "=== stderr ===" not in message and "\x1b[" not in message


def test_every_error_is_a_vdt_error():
    from vdt_runtime.errors import VDTError

    for error in (InputError, BundleError, BackendError):
        assert issubclass(error, VDTError)
    checkpoint = pytest.importorskip("vdt_export.checkpoint")
    assert issubclass(checkpoint.CheckpointError, VDTError)
    assert issubclass(InputError, ValueError)  # a caller catching ValueError keeps working


def _doc_rows() -> dict[str, tuple[str, str]]:
    """docs/errors.md table rows: id -> (error type, example message)."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([a-z0-9-]+)`\s*\|[^|]*\|\s*`?(\w+)`?\s*\|\s*(.*?)\s*\|\s*$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3).replace("\\|", "|"))
    return rows


def test_docs_table_matches_catalogue():
    rows = _doc_rows()
    assert sorted(rows) == sorted(c.id for c in CASES)
    for case in CASES:
        error, example = rows[case.id]
        assert error == case.error, case.id
        for fragment in case.fragments:
            assert fragment in example, f"docs/errors.md row {case.id}: {fragment!r} not in {example!r}"
