"""Checkpoint loading: config inference, save/load round trips, and refusal of mismatching weights."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vdt_export.checkpoint import CheckpointError, infer_config, load_state_dict, load_vdt, save_state_dict  # noqa: E402,E501
from vdt_export.sources import randomize_  # noqa: E402
from vdt_export.models import VDT, config_from_name  # noqa: E402


def _tiny(seed: int = 0, **overrides) -> VDT:
    cfg = config_from_name("VDT-tiny", input_size=8, num_frames=8, **overrides)
    return randomize_(VDT(cfg), seed=seed).eval()


def _outputs(model: VDT) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 3, model.config.in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        return model(latents, torch.tensor([3.0, 700.0]))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_gives_identical_outputs(tmp_path, suffix):
    model = _tiny()
    path = save_state_dict(model, tmp_path / f"w{suffix}")
    loaded = load_vdt(path, "VDT-tiny")
    assert loaded.config == model.config
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert _outputs(model).abs().mean() > 1e-2
    assert [p.name for p in tmp_path.iterdir()] == [f"w{suffix}"]  # no temp files left behind


@pytest.mark.parametrize("wrapper", ["ema", "model", "state_dict"])
def test_wrapped_training_checkpoint(tmp_path, wrapper):
    import argparse

    model = _tiny()
    torch.save({wrapper: model.state_dict(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "ckpt.pt")
    state = load_state_dict(tmp_path / "ckpt.pt")
    assert set(state) == set(model.state_dict())
    assert torch.equal(_outputs(load_vdt(state, "VDT-tiny")), _outputs(model))


def test_ddp_prefix_is_stripped():
    model = _tiny()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert torch.equal(_outputs(load_vdt(state, "VDT-tiny")), _outputs(model))


def test_infer_config_from_shapes():
    model = _tiny(in_channels=3, learn_sigma=False, num_classes=2)
    cfg = infer_config(model.state_dict(), num_heads=4)
    assert cfg == model.config
    # heads come from the named config whose hidden size matches
    assert infer_config(model.state_dict()).num_heads == 4


def test_unknown_hidden_needs_heads():
    model = randomize_(VDT(config_from_name("VDT-tiny", hidden_size=48, input_size=8, num_frames=2)), 0)
    with pytest.raises(CheckpointError, match="hidden size 48"):
        infer_config(model.state_dict())
    assert infer_config(model.state_dict(), num_heads=3).num_heads == 3


def test_named_config_disagreeing_with_weights_is_refused():
    with pytest.raises(CheckpointError, match="depth=12 but the checkpoint has depth=2"):
        load_vdt(_tiny().state_dict(), "VDT-S/2")


def test_wrong_shape_names_key_and_both_shapes():
    state = _tiny().state_dict()
    state["blocks.1.attn.qkv.weight"] = torch.zeros(192, 32)
    with pytest.raises(CheckpointError) as err:
        load_vdt(state, "VDT-tiny")
    assert "blocks.1.attn.qkv.weight" in str(err.value)
    assert "(192, 32)" in str(err.value) and "(192, 64)" in str(err.value)


def test_missing_and_unexpected_keys_are_refused():
    state = _tiny().state_dict()
    missing = dict(state)
    del missing["blocks.0.temporal_fc.bias"]
    with pytest.raises(CheckpointError, match="missing \\['blocks.0.temporal_fc.bias'\\]"):
        load_vdt(missing, "VDT-tiny")
    extra = {**state, "blocks.0.attn.q_norm.weight": torch.ones(16)}
    with pytest.raises(CheckpointError, match="unexpected \\['blocks.0.attn.q_norm.weight'\\]"):
        load_vdt(extra, "VDT-tiny")
    with pytest.raises(CheckpointError, match="no 'x_embedder.proj.weight'"):
        load_vdt({"foo": torch.zeros(1)})


def test_pos_embed_grid_change_needs_interpolation_flag():
    model = _tiny()
    with pytest.raises(CheckpointError, match=r"pos_embed has shape \(1, 16, 64\).*\(1, 64, 64\)"):
        load_vdt(model.state_dict(), "VDT-tiny", input_size=16)
    bigger = load_vdt(model.state_dict(), "VDT-tiny", input_size=16, interpolate_pos_embed=True)
    assert bigger.pos_embed.shape == (1, 64, 64)
    assert torch.equal(bigger.pos_embed, VDT(bigger.config).pos_embed)  # the fixed sin-cos for the 8×8 grid
    assert torch.equal(bigger.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_max_frames_extends_time_table_and_refuses_beyond():
    model = load_vdt(_tiny().state_dict(), "VDT-tiny", max_frames=12)
    assert model(torch.zeros(1, 12, 4, 8, 8), torch.zeros(1)).shape == (1, 12, 8, 8, 8)
    with pytest.raises(ValueError, match="T=13"):
        model(torch.zeros(1, 13, 4, 8, 8), torch.zeros(1))
    with pytest.raises(CheckpointError, match="max_frames=4"):
        load_vdt(_tiny().state_dict(), "VDT-tiny", max_frames=4)


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="'.npz'"):
        load_state_dict(tmp_path / "w.npz")
    torch.save({"step": torch.tensor(3), "note": "x"}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no state_dict of tensors"):
        load_state_dict(tmp_path / "junk.pt")


def test_randomize_is_seeded_and_leaves_fixed_tables():
    a, b, c = _tiny(seed=1), _tiny(seed=1), _tiny(seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.final_layer.linear.weight, c.final_layer.linear.weight)
    assert a.final_layer.adaLN_modulation[-1].weight.abs().min() > 0  # zero-initialised layers are filled
    assert torch.equal(a.pos_embed, VDT(a.config).pos_embed)


def test_load_vae_from_folder_and_from_file(tmp_path):
    pytest.importorskip("diffusers")
    from vdt_export.vae import VAEDecoder, downsample_factor
    from vdt_export.sources import build_vae, load_vae, tiny_vae_config

    vae = randomize_(build_vae(tiny_vae_config()), seed=4)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def decode(model):
        with torch.no_grad():
            return VAEDecoder(model)(latents)

    vae.save_pretrained(tmp_path / "sd" / "vae")  # the layout of a full SD pipeline folder
    assert torch.equal(decode(load_vae(tmp_path / "sd")), decode(vae))
    save_state_dict(vae, tmp_path / "vae.safetensors")
    assert torch.equal(decode(load_vae(tmp_path / "vae.safetensors", tiny_vae_config())), decode(vae))
    assert downsample_factor(vae) == 2
    with pytest.raises(CheckpointError, match="needs a config"):
        load_vae(tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match=r"shape \(16, 8, 3, 3\) in the checkpoint but the model expects"):
        load_vae(tmp_path / "vae.safetensors", {**tiny_vae_config(), "block_out_channels": (8, 32)})
    with pytest.raises(CheckpointError, match="no config.json"):
        load_vae(tmp_path)


def test_checkpoint_folder_round_trip(tiny_models, tmp_path):
    import json

    from vdt_export.checkpoint import load_vdt
    from vdt_export.sources import save_checkpoint_folder
    from vdt_export.sources import load_vae

    vdt, vae = tiny_models
    folder = save_checkpoint_folder(tmp_path / "ckpt", vdt, vae, scale_factor=0.5, diffusion={"prediction_type": "v"})
    meta = json.loads((folder / "scale.json").read_text())
    assert meta == {"scale_factor": 0.5, "diffusion": {"prediction_type": "v"}}
    heads = json.loads((folder / "vdt_config.json").read_text())["num_heads"]
    again = load_vdt(folder / "vdt.safetensors", num_heads=heads)
    assert again.config == vdt.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vdt.state_dict().values()))
    vae2 = load_vae(folder / "vae.safetensors", folder / "vae_config.json")
    assert all(torch.equal(a, b) for a, b in zip(vae2.state_dict().values(), vae.state_dict().values()))
