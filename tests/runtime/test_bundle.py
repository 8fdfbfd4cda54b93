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
    assert Bundle.load().path == Bundle.load(None).path == default_bundle_path()  # None: the default, as Pipeline.load
    monkeypatch.chdir(tmp_path)  # a name, not a path: found from any folder
    assert Bundle.load("default").name == "default"
    with pytest.raises(BundleError, match=r"'nope' does not exist .*installed bundle: default"):
        Bundle.load("nope")
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load("sub/default")  # a path is never looked up by name


def test_external_data_shared_by_two_graphs_is_listed_once_and_verified(bundle_copy):
    """The exporter puts both denoiser graphs' weights in one denoiser.data: listed once, hashed by verify."""
    from vdt_runtime.bundle._onnx_graph import read_graph_info

    files = json.loads((bundle_copy / "manifest.json").read_text())["files"]
    for graph in ("denoiser.onnx", "denoiser.fused.onnx"):
        assert read_graph_info(bundle_copy / graph).external == {"denoiser.data"}
    assert "denoiser.data" in files
    b = Bundle.load(bundle_copy, verify=True)
    data = bytearray((bundle_copy / "denoiser.data").read_bytes())
    data[10] ^= 0xFF  # the weights change, the graphs do not
    (bundle_copy / "denoiser.data").write_bytes(bytes(data))
    Bundle.load(bundle_copy)  # sizes match: only verify can tell
    with pytest.raises(BundleError, match="'denoiser.data' fails its hash check"):
        b.verify()


def test_unlisted_external_data_is_refused_even_without_verify(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["files"].pop("denoiser.data"))
    with pytest.raises(BundleError, match="'denoiser.data'.*do not list"):
        Bundle.load(bundle_copy)


def test_symlink_inside_the_bundle_is_fine(bundle_copy):
    (bundle_copy / "real").mkdir()
    shutil.move(bundle_copy / "vae_decoder.onnx", bundle_copy / "real" / "vae_decoder.onnx")
    (bundle_copy / "vae_decoder.onnx").symlink_to(Path("real") / "vae_decoder.onnx")
    Bundle.load(bundle_copy, verify=True)


def test_newer_optional_fields_and_precisions_are_accepted(bundle_copy):
    """What other tools add must not break loading: unknown keys anywhere, fp16 / int8 files, a sampler hint."""
    import shutil as sh

    sh.copyfile(bundle_copy / "denoiser.onnx", bundle_copy / "denoiser.int8.onnx")

    def edit(m):
        m["recommended"] = {"sampler": "ddim", "steps": 20}
        m["extensions"] = {"someone.else": [1, 2, 3]}
        m["model"]["future_field"] = "x"
        m["stages"]["denoiser"]["files"]["int8"] = "denoiser.int8.onnx"
        m["stages"]["denoiser"]["engine_hint"] = {"any": "thing"}
        m["files"]["denoiser.int8.onnx"] = {"sha256": sha256_file(bundle_copy / "denoiser.int8.onnx")}
    edit_manifest(bundle_copy, edit)
    b = Bundle.load(bundle_copy, verify=True)
    assert b.precisions("denoiser") == ("fp32", "int8")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["model"].update(learn_sigma="true"), "learn_sigma must be true or false"),
    (lambda m: m["vae"].update(scale_factor=-1), "scale_factor must be a finite number > 0, got -1"),
    (lambda m: m["vae"].update(downsample=2.0), "vae.downsample must be an integer"),
    (lambda m: m.update(image_size=True), "image_size must be an integer"),
    (lambda m: m.update(precision="fp8"), "precision must be one of fp32, fp16, bf16, int8"),
    (lambda m: m["stages"].update(text_encoder={}), "unknown stage"),
    (lambda m: m["stages"]["denoiser"]["inputs"][0].update(shape=["batch", "frames", 4, 8, -8]), "-8"),
    (lambda m: m["stages"]["denoiser"]["inputs"][0].update(dtype="complex128"), "dtype must be one of"),
    (lambda m: m["stages"]["denoiser"]["inputs"].pop(), "lists 1 tensors"),
    (lambda m: m["stages"]["denoiser"]["dynamic_axes"]["batch"].update(min=9, opt=1), "min <= opt <= max"),
    (lambda m: m["stages"]["vae_decoder"]["dynamic_axes"].update(latent_height={"min": 1, "opt": 2, "max": 4}),
     "must include model.input_size = 8"),
    (lambda m: m["files"]["denoiser.onnx"].update(sha256="abc"), "64 hex digits"),
    (lambda m: m["files"]["denoiser.onnx"].update(size="1"), "size must be an integer"),
    (lambda m: m["model"].update(max_frames=4), "max_frames must be in model.num_frames=8"),
    (lambda m: m["model"].update(patch_size=3), "not a multiple of model.patch_size=3"),
])
def test_strict_schema(bundle_copy, edit, match):
    edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=match):
        Bundle.load(bundle_copy)


def test_manifest_constants_are_refused(bundle_copy):
    text = (bundle_copy / "manifest.json").read_text().replace('"scale_factor": 0.18215', '"scale_factor": NaN')
    (bundle_copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="NaN is not a number JSON allows"):
        Bundle.load(bundle_copy)


def test_manifest_that_is_a_device_or_huge_is_never_read_whole(tmp_path):
    (tmp_path / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="no manifest.json"):  # not a regular file
        Bundle.load(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with open(tmp_path / "manifest.json", "wb") as f:
        f.truncate(1 << 32)  # 4 GiB, sparse
    with pytest.raises(BundleError, match="larger than 1048576 bytes"):
        Bundle.load(tmp_path)


def test_graph_states_its_max_frames_and_the_manifest_must_agree(bundle_copy):
    """The frames axis bound is the one number a graph's dims cannot state; the exporter records it."""
    from vdt_runtime.bundle._onnx_graph import read_graph_info

    assert read_graph_info(bundle_copy / "denoiser.onnx").metadata["vdt.max_frames"] == "8"

    def longer(m):
        m["model"]["max_frames"] = 16
        m["stages"]["denoiser"]["dynamic_axes"]["frames"]["max"] = 16
    edit_manifest(bundle_copy, longer)
    with pytest.raises(BundleError, match="denoiser.onnx states max_frames '8'.*model.max_frames is 16"):
        Bundle.load(bundle_copy)
