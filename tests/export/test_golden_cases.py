"""Golden cases written by vdt-export (issue 22): golden.npz listed and hashed like every bundle file, references
from the torch model in fp32, tolerances from measurement; `vdt-export golden` adds them to an existing bundle after
verifying its files and refuses weights that do not reproduce the bundle's fp32 outputs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vdt_export.cli import main  # noqa: E402
from vdt_export.golden import FLOOR, MARGIN  # noqa: E402
from vdt_runtime.bundle import Bundle, default_bundle_path, sha256_file  # noqa: E402
from vdt_runtime.selftest import load_golden  # noqa: E402

TINY = ["--random-init", "0", "--vae-config", "tiny"]  # how conftest's tiny models were made


def test_export_writes_listed_hashed_golden_cases(tiny_bundle, tiny_models):
    bundle = Bundle.load(tiny_bundle, verify=True)
    section = bundle.manifest["golden"]
    entry = bundle.manifest["files"]["golden.npz"]
    assert entry["sha256"] == sha256_file(tiny_bundle / "golden.npz") and entry["size"] < 64 * 1024
    golden = load_golden(bundle)
    frames = {golden.arrays[f"denoiser.{i}.latents"].shape[1] for i in range(section["cases"]["denoiser"])}
    steps = {float(golden.arrays[f"denoiser.{i}.timestep"][0]) for i in range(section["cases"]["denoiser"])}
    assert len(frames) == 2 and len(steps) == 2  # two frame counts, two timesteps
    assert golden.arrays["denoiser.0.latents"].dtype == np.float16  # inputs: exact fp16 values
    vdt, _ = tiny_models
    x = golden.arrays["denoiser.3.latents"].astype(np.float32)
    t = golden.arrays["denoiser.3.timestep"]
    with torch.no_grad():
        want = vdt(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    # the torch model's own fp32 output: bit for bit only on the CPU that wrote the committed bundle, since torch's
    # CPU kernels round differently per instruction set (AMD Zen 4 wrote it; an Intel Xeon with AMX differs by 5.5e-6)
    np.testing.assert_allclose(golden.arrays["denoiser.3.model_out"], want, rtol=0, atol=1e-5 * np.abs(want).max())
    fp32 = section["tolerances"]["fp32"]
    assert set(fp32) == {"denoiser", "vae_encoder", "vae_decoder", "end_to_end"}
    runs = [r for r in section["measured"]["runs"] if r["precision"] == "fp32" and r["check"] == "denoiser"]
    assert runs and fp32["denoiser"]["max_abs"] >= MARGIN * max(r["max_abs"] for r in runs) * 0.999
    ref = np.abs(golden.arrays["denoiser.0.model_out"]).max()
    assert fp32["denoiser"]["max_abs"] >= FLOOR["fp32"] * ref * 0.999


def test_default_bundle_ships_small_golden_cases():
    bundle = Bundle.load(default_bundle_path())
    size = bundle.manifest["files"]["golden.npz"]["size"]
    assert size < 128 * 1024, f"golden.npz is {size} bytes"
    assert {"fp32", "fp16", "int8"} <= set(bundle.manifest["golden"]["tolerances"])


def _plain_copy(src, tmp_path):
    """A copy of `src` as an older bundle: no golden section, no golden.npz."""
    b = tmp_path / "old"
    shutil.copytree(src, b)
    (b / "golden.npz").unlink()
    m = json.loads((b / "manifest.json").read_text())
    del m["golden"], m["files"]["golden.npz"]
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_golden_command_adds_cases_to_an_old_bundle(tiny_bundle, tmp_path, capsys):
    b = _plain_copy(tiny_bundle, tmp_path)
    assert load_golden(Bundle.load(b)) is None
    assert main(["golden", str(b), *TINY]) == 0
    assert "wrote" in capsys.readouterr().out
    bundle = Bundle.load(b, verify=True)
    assert load_golden(bundle) is not None and "fp32" in bundle.manifest["golden"]["tolerances"]
    assert not [p.name for p in b.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_golden_refuses_weights_that_do_not_reproduce_the_bundle(tiny_bundle, tmp_path, capsys):
    b = _plain_copy(tiny_bundle, tmp_path)
    before = (b / "manifest.json").read_bytes()
    assert main(["golden", str(b), "--random-init", "5", "--vae-config", "tiny"]) == 2
    assert "do not reproduce bundle 'tiny''s fp32 outputs: stage denoiser" in capsys.readouterr().err
    assert (b / "manifest.json").read_bytes() == before and not (b / "golden.npz").exists()


def test_golden_verifies_the_bundle_files_first(tiny_bundle, tmp_path, capsys):
    b = _plain_copy(tiny_bundle, tmp_path)
    with open(b / "vae_decoder.onnx", "ab") as f:
        f.write(b"\0")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["vae_decoder.onnx"]["size"] += 1  # same size as listed, wrong hash
    (b / "manifest.json").write_text(json.dumps(m))
    assert main(["golden", str(b), *TINY]) == 2
    assert "vae_decoder.onnx' fails its hash check" in capsys.readouterr().err
