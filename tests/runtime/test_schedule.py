"""Schedule: linear betas, respacing rule, coefficients and argument errors."""
from dataclasses import FrozenInstanceError
from fractions import Fraction

import numpy as np
import pytest

from vdt_runtime.errors import InputError
from vdt_runtime.schedule import make_schedule, respaced_timesteps


def _full_alphas_cumprod(n=1000):
    scale = 1000 / n
    return np.cumprod(1.0 - np.linspace(scale * 1e-4, scale * 0.02, n))


def test_full_schedule_is_unrespaced():
    s = make_schedule(1000)
    assert s.timesteps.dtype == np.int64
    np.testing.assert_array_equal(s.timesteps, np.arange(1000))
    np.testing.assert_allclose(s.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-9, atol=0)
    np.testing.assert_allclose(s.alphas_cumprod, _full_alphas_cumprod(), rtol=1e-12)
    assert s.alphas_cumprod_prev[0] == 1.0
    assert s.num_timesteps == 1000 and s.steps == 1000


@pytest.mark.parametrize("k", [2, 3, 7, 50, 100, 250])
def test_respacing_matches_exact_rounding(k):
    # round(i·(N−1)/(K−1)), half to even, in exact arithmetic
    want = [round(Fraction(i * 999, k - 1)) for i in range(k)]
    np.testing.assert_array_equal(respaced_timesteps(1000, k), want)
    np.testing.assert_array_equal(make_schedule(k).timesteps, want)


@pytest.mark.parametrize("k", [50, 250, 999])
def test_respacing_accumulates_the_float_stride(k):
    want, cur = [], 0.0
    for _ in range(k):
        want.append(round(cur))
        cur += 999 / (k - 1)
    np.testing.assert_array_equal(respaced_timesteps(1000, k), want)


def test_accumulated_stride_differs_from_exact_where_the_official_code_does():
    # i·999/998 at i = 499 is exactly 499.5 (→ 500), the accumulated float lands just below it
    assert respaced_timesteps(1000, 999)[499] == 499


def test_respacing_known_values():
    np.testing.assert_array_equal(respaced_timesteps(1000, 3), [0, 500, 999])  # 499.5 rounds to even
    assert respaced_timesteps(1000, 50)[:4].tolist() == [0, 20, 41, 61]
    assert respaced_timesteps(1000, 250)[:4].tolist() == [0, 4, 8, 12]
    assert respaced_timesteps(1000, 250)[-1] == 999


def test_respaced_coefficients_from_the_equations():
    s = make_schedule(4)
    ac_full = _full_alphas_cumprod()
    t = np.array([0, 333, 666, 999])
    ac = ac_full[t]
    ac_prev = np.array([1.0, ac[0], ac[1], ac[2]])
    beta = 1 - ac / ac_prev
    post_var = beta * (1 - ac_prev) / (1 - ac)
    np.testing.assert_array_equal(s.timesteps, t)
    np.testing.assert_allclose(s.alphas_cumprod, ac, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod_prev, ac_prev, rtol=1e-12)
    np.testing.assert_allclose(s.betas, beta, rtol=1e-12)
    np.testing.assert_allclose(s.posterior_variance, post_var, rtol=1e-12)
    assert s.posterior_variance[0] == 0.0
    clipped = np.log([post_var[1], post_var[1], post_var[2], post_var[3]])
    np.testing.assert_allclose(s.posterior_log_variance_clipped, clipped, rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef1, beta * np.sqrt(ac_prev) / (1 - ac), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2, (1 - ac_prev) * np.sqrt(1 - beta) / (1 - ac), rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod, 1 / np.sqrt(ac), rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / ac - 1), rtol=1e-12)
    for name in ("betas", "alphas_cumprod", "posterior_mean_coef1", "posterior_log_variance_clipped"):
        assert getattr(s, name).dtype == np.float64


def test_one_step_keeps_last_timestep_and_predicts_x0():
    s = make_schedule(1)
    assert s.timesteps.tolist() == [999]
    ac = _full_alphas_cumprod()[999]
    np.testing.assert_allclose(s.betas, [1 - ac], rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef1, [1.0], rtol=1e-12)  # mean = x̂₀
    assert s.posterior_mean_coef2[0] == 0.0
    assert np.isfinite(s.posterior_log_variance_clipped).all()


def test_other_num_timesteps_scales_betas():
    s = make_schedule(100, num_timesteps=100)
    np.testing.assert_allclose(s.betas, np.linspace(1e-3, 0.2, 100), rtol=1e-9)


def test_schedule_is_frozen_and_records_types():
    s = make_schedule(5, prediction_type="v", variance_type="fixed_small")
    assert (s.prediction_type, s.variance_type) == ("v", "fixed_small")
    with pytest.raises(FrozenInstanceError):
        s.prediction_type = "epsilon"


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True, "10", None])
def test_bad_steps_named(steps):
    with pytest.raises(InputError, match=r"steps.*1\.\.1000"):
        make_schedule(steps)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"prediction_type": "x0"}, "prediction_type must be one of epsilon, v, got 'x0'"),
        ({"variance_type": "learned"}, "variance_type must be one of learned_range, fixed_small, got 'learned'"),
        ({"beta_schedule": "cosine"}, "beta_schedule must be one of linear, got 'cosine'"),
        ({"num_timesteps": 10}, "num_timesteps=10"),
        ({"num_timesteps": 1}, "num_timesteps"),
    ],
)
def test_bad_schedule_arguments(kwargs, word):
    with pytest.raises(InputError, match=word):
        make_schedule(1, **kwargs)
