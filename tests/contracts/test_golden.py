"""Golden tests against the official VDT code (RERV/VDT): the project's contract with the paper's code.

tests/data/ holds outputs the official repository's own models.py and diffusion/ produced (how, in
tests/data/README.md): a tiny official VDT with random weights, its state_dict and its outputs at T = 4 and
T = 2, and the official 50-step respaced DDPM loop on a predict mask with every noise draw recorded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vdt_runtime.samplers import get_sampler
from vdt_runtime.schedule import make_schedule

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL_TOL = 1e-5  # max abs error against the official output (a correct port measured 2.4e-7)
SAMPLER_TOL = 1e-5  # max abs error over the generated cells, relative to their largest value
CASES = ("T4", "T2")


@pytest.fixture(scope="module")
def official():
    return np.load(DATA / "vdt_official_tiny.npz")


@pytest.fixture(scope="module")
def official_vdt(official):
    """The official state_dict, through the project's checkpoint loader (keys and shapes checked there)."""
    torch = pytest.importorskip("torch")
    from vdt_export.checkpoint import load_vdt

    state = {k[len("sd/"):]: torch.from_numpy(official[k]) for k in official.files if k.startswith("sd/")}
    return load_vdt(state, "VDT-tiny")


def _check(got: np.ndarray, official, case: str) -> None:
    want = official[f"{case}/model_out"]
    assert got.shape == want.shape
    assert np.abs(want).mean() > 0.1  # every weight random: the output is far from trivial
    assert np.abs(got - want).max() <= MODEL_TOL, f"{case}: max abs err {np.abs(got - want).max():.3e}"


def test_official_state_dict_loads_with_the_papers_config(official_vdt, official):
    cfg = official_vdt.config
    assert (cfg.input_size, cfg.patch_size, cfg.in_channels, cfg.hidden_size, cfg.depth, cfg.num_heads,
            cfg.num_frames, cfg.learn_sigma) == (8, 2, 4, 64, 2, 4, 4, True)
    assert len([k for k in official.files if k.startswith("sd/")]) == len(official_vdt.state_dict())


@pytest.mark.parametrize("case", CASES)
def test_torch_model_matches_official(official_vdt, official, case):
    import torch

    with torch.no_grad():
        got = official_vdt(torch.from_numpy(official[f"{case}/latents"]),
                           torch.from_numpy(official[f"{case}/timestep"])).numpy()
    _check(got, official, case)


@pytest.fixture(scope="module", params=[False, True], ids=["standard", "fused"])
def official_onnx(official_vdt, tmp_path_factory, request):
    """The official model exported to ONNX (standard operators, or onnxruntime-fused attention), one session."""
    ort = pytest.importorskip("onnxruntime")
    from vdt_export.onnx_export import export_denoiser

    path = tmp_path_factory.mktemp("golden") / "denoiser.onnx"
    export_denoiser(official_vdt, path, max_batch=2, fused=request.param)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("case", CASES)
def test_exported_onnx_matches_official(official_onnx, official, case):
    feeds = {"latents": official[f"{case}/latents"], "timestep": official[f"{case}/timestep"].astype(np.float32)}
    (got,) = official_onnx.run(None, feeds)
    _check(got, official, case)


def _stand_in_denoiser(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The closed-form model the official loop ran with (tests/data/README.md), float64 maths cast to float32."""
    x = x.astype(np.float64)
    tt = t.astype(np.float64)[:, None, None, None, None] / 1000.0
    eps = 0.9 * x + 0.2 * np.sin(3.0 * tt + x)
    v = np.tanh(0.5 * x - tt)
    return np.concatenate([eps, v], axis=2).astype(np.float32)


class RecordedNoise:
    """A noise function for the samplers: hands out the official loop's draws in order and counts them."""

    def __init__(self, draws: np.ndarray):
        self.draws, self.used = draws, 0

    def __call__(self, shape):
        assert tuple(shape) == self.draws.shape[1:]
        self.used += 1
        return self.draws[self.used - 1]


def test_ddpm_reproduces_official_sampling_loop():
    golden = np.load(DATA / "sampler_official_50.npz")
    schedule = make_schedule(50)  # linear betas, 1000 steps, epsilon, learned-range variance: the official setup
    np.testing.assert_array_equal(schedule.timesteps, golden["timestep_map"])
    noise = RecordedNoise(golden["noise"][1:])
    out = get_sampler("ddpm")(_stand_in_denoiser, golden["noise"][0], schedule, rng=noise, mask=golden["mask"],
                              x_given=golden["given"])
    assert noise.used == 49  # one draw per step but the last
    generate = np.broadcast_to(golden["mask"][:, :, None] == 1, out.shape)
    got, want = out[generate], golden["result"][generate]
    assert np.abs(got - want).max() <= SAMPLER_TOL * np.abs(want).max(), np.abs(got - want).max()
    np.testing.assert_array_equal(out[~generate], golden["given"][~generate])  # given cells exact
    assert not np.allclose(got, golden["noise"][0][generate], atol=0.1)  # the loop did move the state
