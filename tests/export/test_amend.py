"""Export commands never launder or mix weights (issue 21, class 3): a command that rewrites a manifest lists only
what it wrote and builds only on verified files; fp16 stages of other weights are refused; no bundle is written
inside another. Each refusal leaves the bundle byte for byte as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from vdt_export.cli import main  # noqa: E402
from vdt_runtime.bundle import Bundle  # noqa: E402
from vdt_runtime.errors import BundleError  # noqa: E402


def _copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _flip_byte(path: Path) -> None:
    """Change one byte, keeping the size: only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_quantize_refuses_a_corrupted_file_and_verify_still_fails(tiny_bundle, tmp_path, capsys):
    bundle = _copy(tiny_bundle, tmp_path)
    _flip_byte(bundle / "denoiser.data")
    before = _snapshot(bundle)
    assert main(["quantize", str(bundle)]) == 2
    assert "'denoiser.data' fails its hash check" in capsys.readouterr().err
    assert _snapshot(bundle) == before
    with pytest.raises(BundleError, match="'denoiser.data' fails its hash check"):
        Bundle.load(bundle, verify=True)


def test_write_manifest_never_rehashes_a_file_it_did_not_write(tiny_bundle, tmp_path):
    from vdt_export.bundle import read_manifest, write_manifest

    bundle = _copy(tiny_bundle, tmp_path)
    manifest = read_manifest(bundle)
    _flip_byte(bundle / "vae_decoder.onnx")
    write_manifest(bundle, manifest)  # e.g. a command adding a file of its own
    with pytest.raises(BundleError, match="'vae_decoder.onnx' fails its hash check"):
        Bundle.load(bundle, verify=True)
    write_manifest(bundle, read_manifest(bundle), written={"vae_decoder.onnx"})  # what a command wrote is hashed
    Bundle.load(bundle, verify=True)


def test_fp16_of_another_models_weights_is_refused(tiny_bundle, tmp_path, capsys):
    """tiny_bundle is `--random-init 0`; seed 5 has the same config and other weights."""
    bundle = _copy(tiny_bundle, tmp_path)
    before = _snapshot(bundle)
    assert main(["fp16", str(bundle), "--random-init", "5"]) == 2
    err = capsys.readouterr().err
    assert "fp16 denoiser" in err and "not the weights the bundle was exported from" in err, err
    assert _snapshot(bundle) == before


def test_onnx_out_inside_a_bundle_is_refused(tiny_bundle, tmp_path, capsys):
    bundle = _copy(tiny_bundle, tmp_path)
    before = _snapshot(bundle)
    nested = bundle / "sub" / "nested"
    assert main(["onnx", "--random-init", "7", "--vae-config", "tiny", "--config", "VDT-tiny", "--image-size", "8",
                 "--num-frames", "2", "--out", str(nested)]) == 2
    assert "lies inside bundle" in capsys.readouterr().err
    assert _snapshot(bundle) == before and not (bundle / "sub").exists()
