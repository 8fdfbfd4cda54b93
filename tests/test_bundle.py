"""Bundle loading: manifest validation, files, hashes, accessors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vdt_runtime.bundle import Bundle, default_bundle_path, sha256_file
from vdt_runtime.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle to tamper with."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b"))


def edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_load_and_accessors(tiny_bundle):
    b = Bundle.load(tiny_bundle, verify=True)
    assert (b.image_size, b.max_frames, b.num_frames) == (16, 8, 8)
    assert b.latent_shape(5) == (5, 4, 8, 8)
    assert b.diffusion["prediction_type"] == "epsilon"
    assert [s.name for s in b.stage("denoiser").inputs] == ["latents", "timestep"]
    assert b.stage("denoiser").axis_max("frames") == 8
    assert b.file_path("vae_decoder").is_file()
    text = b.describe()
    for word in ("denoiser", "vae_encoder", "vae_decoder", "learned_range", "16x16", "8 max"):
        assert word in text


def test_wrong_format_version_names_found_and_supported(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=7))
    with pytest.raises(BundleError, match=r"format_version 7 .*supports format_version 1"):
        Bundle.load(bundle_copy)


def test_wrong_format_name(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format="other"))
    with pytest.raises(BundleError, match="'other'"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("section,key", [(None, "diffusion"), (None, "files"), ("model", "max_frames"),
                                         ("vae", "scale_factor"), ("stages", "vae_decoder")])
def test_missing_required_key(bundle_copy, section, key):
    edit_manifest(bundle_copy, lambda m: (m[section] if section else m).pop(key))
    with pytest.raises(BundleError, match=key):
        Bundle.load(bundle_copy)


def test_inconsistent_variance_and_channels_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["diffusion"].update(variance_type="fixed_small"))
    with pytest.raises(BundleError, match="learn_sigma"):
        Bundle.load(bundle_copy)


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "vae_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="vae_encoder.onnx.*missing"):
        Bundle.load(bundle_copy)


def test_stage_file_must_be_listed(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["files"].pop("vae_decoder.onnx"))
    with pytest.raises(BundleError, match="vae_decoder.onnx.*not listed"):
        Bundle.load(bundle_copy)


def test_hash_mismatch_names_file_expected_and_actual(bundle_copy):
    path = bundle_copy / "vae_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    Bundle.load(bundle_copy)  # hashes are checked on request only
    expected = json.loads((bundle_copy / "manifest.json").read_text())["files"]["vae_decoder.onnx"]["sha256"]
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle_copy, verify=True)
    msg = str(err.value)
    assert "vae_decoder.onnx" in msg and expected in msg and sha256_file(path) in msg


def test_size_mismatch_refused_without_verify(bundle_copy):
    with open(bundle_copy / "denoiser.onnx", "ab") as f:
        f.write(b"extra")
    with pytest.raises(BundleError, match="denoiser.onnx.*bytes"):
        Bundle.load(bundle_copy)


def test_malformed_json_reports_position(bundle_copy):
    (bundle_copy / "manifest.json").write_text('{"format": "vdt-bundle",\n  "format_version": 1,,}')
    with pytest.raises(BundleError, match=r"line 2 column"):
        Bundle.load(bundle_copy)


def test_file_names_cannot_escape_the_bundle(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["files"].update({"../evil.onnx": {"sha256": "0" * 64}}))
    with pytest.raises(BundleError, match="evil.onnx.*relative"):
        Bundle.load(bundle_copy)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path)


def test_unknown_precision_and_stage(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    with pytest.raises(BundleError, match="int8.*fp32"):
        b.file_path("denoiser", "int8")
    with pytest.raises(BundleError, match="'text_encoder'"):
        b.stage("text_encoder")


def test_default_bundle_path():
    assert default_bundle_path().parts[-2:] == ("engines", "default")


def test_installed_bundles_load_by_name(tmp_path, monkeypatch):
    from vdt_runtime.bundle import installed_bundles

    assert installed_bundles()["default"] == default_bundle_path()
    assert Bundle.load("default").path == default_bundle_path()
    monkeypatch.chdir(tmp_path)  # a name, not a path: found from any folder
    assert Bundle.load("default").name == "default"
    with pytest.raises(BundleError, match=r"'nope' does not exist .*installed bundle: default"):
        Bundle.load("nope")
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load("sub/default")  # a path is never looked up by name
