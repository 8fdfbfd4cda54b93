"""`vdt-export` CLI: export a random tiny model, verify bundles, and fail clearly on bad input."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from vdt_export.cli import main  # noqa: E402


def test_verify_passes_for_the_same_weights(tiny_bundle, capsys):
    # tiny_bundle's VDT uses seed 0 and its VAE seed 1: exactly what --random-init 0 --vae-config tiny rebuilds
    assert main(["verify", str(tiny_bundle), "--random-init", "0", "--vae-config", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "providers[denoiser]: CPUExecutionProvider" in out
    rows = [line for line in out.splitlines() if line.startswith(("denoiser", "vae_"))]
    assert len(rows) == 6 + 6 + 4 and all(line.endswith("ok") for line in rows)  # standard + fused graph, VAE
    assert sum(line.startswith("denoiser (fused)") for line in rows) == 6
    assert any(line.split()[2] == "8" for line in rows)  # T = max_frames is checked


def test_verify_fails_for_other_weights(tiny_bundle, capsys):
    assert main(["verify", str(tiny_bundle), "--random-init", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "VAE stages skipped" in out


def test_verify_detects_a_tampered_file(tiny_bundle, tmp_path, capsys):
    import shutil

    bundle = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, bundle)
    data = bytearray((bundle / "vae_decoder.onnx").read_bytes())
    data[-1] ^= 1  # same size: only the hash can tell
    (bundle / "vae_decoder.onnx").write_bytes(bytes(data))
    assert main(["verify", str(bundle), "--random-init", "0"]) == 1
    assert "'vae_decoder.onnx' fails its hash check" in capsys.readouterr().out


def test_onnx_random_init_then_verify(tmp_path, capsys):
    """Export past the trained length (T ≤ 3 from 2 trained frames) over an old bundle, then verify T = 1…3.
    A folder holding anything its manifest does not list is never replaced."""
    out = tmp_path / "smoke"
    out.mkdir()
    (out / "stale.txt").write_text("not a bundle file")
    args = ["--random-init", "7", "--vae-config", "tiny"]
    export = ["onnx", *args, "--config", "VDT-tiny", "--image-size", "8", "--num-frames", "2", "--max-frames", "3",
              "--out", str(out)]
    assert main(export) == 2
    assert "'stale.txt'" in capsys.readouterr().err and (out / "stale.txt").read_text() == "not a bundle file"
    (out / "stale.txt").unlink()
    assert main(export) == 0  # into the empty folder
    assert main(export) == 0  # over its own old bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "smoke" and manifest["model"]["input_size"] == 4
    assert (manifest["model"]["num_frames"], manifest["model"]["max_frames"]) == (2, 3)
    assert manifest["training"] == {"source": "random-init", "seed": 7, "vae": "tiny (random-init seed 8)"}
    assert manifest["stages"]["denoiser"]["dynamic_axes"]["frames"] == {"min": 1, "opt": 2, "max": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]  # old bundle and staging folders gone
    assert not (out / "stale.txt").exists()
    capsys.readouterr()
    assert main(["verify", str(out), *args]) == 0
    out_text = capsys.readouterr().out
    assert "PASS" in out_text
    assert any(line.startswith("denoiser") and line.split()[2] == "3" for line in out_text.splitlines())
    assert any(line.startswith("denoiser (fused)") and line.split()[3] == "3" for line in out_text.splitlines())


def test_onnx_no_fused_writes_the_standard_graph_only(tmp_path):
    out = tmp_path / "plain"
    assert main(["onnx", "--random-init", "1", "--vae-config", "tiny", "--config", "VDT-tiny", "--image-size", "8",
                 "--num-frames", "2", "--no-fused", "--sampling", "ddim:10", "--sampling-note", "eval", "--out",
                 str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "fused" not in manifest["stages"]["denoiser"] and not (out / "denoiser.fused.onnx").exists()
    assert manifest["sampling"] == {"sampler": "ddim", "steps": 10, "eta": 0.0, "note": "eval"}


@pytest.mark.parametrize("value,match", [("ddim", "sampler:steps"), ("euler:10", "unknown sampler"),
                                         ("ddpm:50:1", "applies only to samplers")])
def test_onnx_bad_sampling_refused_before_exporting(tmp_path, capsys, value, match):
    assert main(["onnx", "--random-init", "1", "--vae-config", "tiny", "--config", "VDT-tiny", "--image-size", "8",
                 "--num-frames", "2", "--sampling", value, "--out", str(tmp_path / "b")]) == 2
    assert match in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_checkpoint_export_errors_are_clear(tmp_path, capsys):
    assert main(["onnx", "--checkpoint", str(tmp_path / "missing.pt"), "--vae-config", "tiny",
                 "--out", str(tmp_path / "b")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["onnx", "--random-init", "0", "--vae-config", "tiny", "--image-size", "15",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--image-size 15 is not a multiple of the VAE downsample factor 2" in capsys.readouterr().err
    assert main(["onnx", "--random-init", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--vae-config tiny" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_onnx_from_a_checkpoint_folder_keeps_its_scale_diffusion_and_provenance(tiny_models, tmp_path):
    """`--checkpoint FOLDER` (what save_checkpoint_folder writes, e.g. checkpoints/default) needs no other flag."""
    from vdt_export.sources import save_checkpoint_folder

    vdt, vae = tiny_models
    diffusion = {"beta_schedule": "linear", "num_timesteps": 1000, "prediction_type": "v",
                 "variance_type": "learned_range"}
    folder = save_checkpoint_folder(tmp_path / "ckpt", vdt, vae, scale_factor=0.5, diffusion=diffusion,
                                    training={"seed": 7})
    out = tmp_path / "b"
    assert main(["onnx", "--checkpoint", str(folder), "--no-fused", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["diffusion"], manifest["vae"]["scale_factor"], manifest["training"]) == (diffusion, 0.5,
                                                                                             {"seed": 7})
    assert manifest["model"]["num_heads"] == vdt.config.num_heads
    assert main(["verify", str(out), "--checkpoint", str(folder)]) == 0


def test_bad_files_are_typed_errors_and_bugs_are_one_line(tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a checkpoint" * 64)
    assert main(["onnx", "--checkpoint", str(junk), "--vae-config", "tiny", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "internal" not in err[0], err
    assert not (tmp_path / "b").exists()

    from vdt_export import cli

    def bug(args):
        raise RuntimeError("kaput\non two lines")

    monkeypatch.setattr(cli, "_cmd_quantize", bug)
    assert main(["quantize", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: internal error (RuntimeError): kaput on two lines -- please report this with the command "
                   "that caused it (VDT_TRACEBACK=1 shows the traceback)"]
    monkeypatch.setenv("VDT_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="kaput"):
        main(["quantize", str(tmp_path)])
