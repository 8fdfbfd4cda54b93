"""Samplers: golden steps against the equations written out here, masks, randomness, errors."""
import numpy as np
import pytest

from vdt_runtime.errors import BackendError, InputError
from vdt_runtime.samplers import SAMPLERS, get_sampler, standard_normal
from vdt_runtime.schedule import make_schedule

SHAPE = (2, 3, 2, 4, 4)  # [B, T, C, h, w]
C = SHAPE[2]


class FakeDenoiser:
    """An elementwise, deterministic stand-in model that records what it was called with."""

    def __init__(self, learned=True):
        self.learned, self.calls = learned, []

    def __call__(self, x, t):
        self.calls.append((x.copy(), t.copy()))
        assert x.dtype == np.float32 and t.dtype == np.float32 and t.shape == (x.shape[0],)
        tt = t.astype(np.float64)[:, None, None, None, None] / 1000.0
        head = 0.3 * x + 0.1 * tt - 0.05
        if not self.learned:
            return head.astype(np.float32)
        var = np.tanh(0.5 * x - tt)
        return np.concatenate([head, var], axis=2).astype(np.float32)


def _x_T(seed=1):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _coeffs(timesteps):
    """ᾱ, ᾱ_prev and β' for the kept timesteps, from the linear betas (N = 1000)."""
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[timesteps]
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    return ac, ac_prev, 1.0 - ac / ac_prev


def _model(x, t, ac, learned=True, v=False):
    """Fake model applied to float32 x, read out as (ε, x̂₀, variance channel)."""
    out = FakeDenoiser(learned)(x.astype(np.float32), np.full(x.shape[0], t, np.float32)).astype(np.float64)
    head = out[:, :, :C]
    if v:
        eps = np.sqrt(ac) * head + np.sqrt(1 - ac) * x
        x0 = np.sqrt(ac) * x - np.sqrt(1 - ac) * head
    else:
        eps = head
        x0 = x / np.sqrt(ac) - np.sqrt(1 / ac - 1) * eps
    return eps, x0, (out[:, :, C:] if learned else None)


def _ddpm_reference(x, timesteps, noise_seed, learned=True, v=False):
    ac, ac_prev, beta = _coeffs(timesteps)
    post_var = beta * (1 - ac_prev) / (1 - ac)
    log_post = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    noise = np.random.default_rng(noise_seed)
    x = x.astype(np.float64)
    for i in reversed(range(len(timesteps))):
        _, x0, var = _model(x, timesteps[i], ac[i], learned, v)
        mean = beta[i] * np.sqrt(ac_prev[i]) / (1 - ac[i]) * x0 + (1 - ac_prev[i]) * np.sqrt(1 - beta[i]) / (1 - ac[i]) * x
        if learned:
            f = (var + 1) / 2
            log_var = f * np.log(beta[i]) + (1 - f) * log_post[i]
        else:
            log_var = log_post[i]
        x = mean + (np.exp(0.5 * log_var) * standard_normal(noise, x.shape) if i > 0 else 0.0)
    return x


def _ddim_reference(x, timesteps, eta, noise_seed, learned=True, v=False):
    ac, ac_prev, _ = _coeffs(timesteps)
    noise = np.random.default_rng(noise_seed)
    x = x.astype(np.float64)
    for i in reversed(range(len(timesteps))):
        eps, x0, _ = _model(x, timesteps[i], ac[i], learned, v)
        sigma = eta * np.sqrt((1 - ac_prev[i]) / (1 - ac[i])) * np.sqrt(1 - ac[i] / ac_prev[i])
        x = np.sqrt(ac_prev[i]) * x0 + np.sqrt(1 - ac_prev[i] - sigma**2) * eps
        if i > 0 and eta > 0:
            x = x + sigma * standard_normal(noise, x.shape)
    return x


def _dpmpp_reference(x, timesteps, eta=0.0, noise_seed=0):
    ac, _, _ = _coeffs(timesteps)
    alpha, sigma = np.sqrt(ac), np.sqrt(1 - ac)
    lam = np.log(alpha / sigma)
    noise = np.random.default_rng(noise_seed)
    x = x.astype(np.float64)
    k = len(timesteps)
    x0s, hs = [], []
    for i in reversed(range(k)):
        x0s.append(_model(x, timesteps[i], ac[i])[1])
        if i == 0:
            x = x0s[-1]
            break
        h = lam[i - 1] - lam[i]
        hs.append(h)
        if len(x0s) == 1:
            d = x0s[-1]
        else:
            r = hs[-2] / h
            d = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        if eta == 0:
            x = sigma[i - 1] / sigma[i] * x - alpha[i - 1] * (np.exp(-h) - 1) * d
        else:  # SDE form, written with e^{-h} = (σ_t·α_s)/(α_t·σ_s) instead of λ
            e = (sigma[i - 1] * alpha[i]) / (alpha[i - 1] * sigma[i])
            x = (sigma[i - 1] / sigma[i] * e**eta * x + alpha[i - 1] * (1 - e ** (1 + eta)) * d
                 + sigma[i - 1] * np.sqrt(1 - e ** (2 * eta)) * standard_normal(noise, x.shape))
    return x


@pytest.mark.parametrize("steps", [2, 3])
def test_ddpm_golden(steps):
    s = make_schedule(steps)
    got = get_sampler("ddpm")(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(7))
    want = _ddpm_reference(_x_T(), s.timesteps.tolist(), 7)
    assert got.dtype == np.float32 and got.shape == SHAPE
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ddpm_v_prediction_fixed_small_golden():
    s = make_schedule(3, prediction_type="v", variance_type="fixed_small")
    got = get_sampler("ddpm")(FakeDenoiser(learned=False), _x_T(), s, rng=np.random.default_rng(3))
    want = _ddpm_reference(_x_T(), [0, 500, 999], 3, learned=False, v=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ddpm_v_prediction_learned_range_golden():
    s = make_schedule(2, prediction_type="v")
    got = get_sampler("ddpm")(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(3))
    np.testing.assert_allclose(got, _ddpm_reference(_x_T(), [0, 999], 3, v=True), rtol=1e-5, atol=1e-5)


def test_ddpm_one_step_returns_x0_prediction():
    s = make_schedule(1)
    got = get_sampler("ddpm")(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(0))
    ac = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[999]
    np.testing.assert_allclose(got, _model(_x_T().astype(np.float64), 999, ac)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_golden(eta):
    s = make_schedule(3)
    got = get_sampler("ddim")(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(5), eta=eta)
    np.testing.assert_allclose(got, _ddim_reference(_x_T(), [0, 500, 999], eta, 5), rtol=1e-5, atol=1e-5)


def test_ddim_v_prediction_fixed_small_golden():
    s = make_schedule(3, prediction_type="v", variance_type="fixed_small")
    got = get_sampler("ddim")(FakeDenoiser(False), _x_T(), s, rng=np.random.default_rng(4), eta=0.5)
    want = _ddim_reference(_x_T(), [0, 500, 999], 0.5, 4, learned=False, v=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ddim_eta_zero_draws_no_noise():
    s = make_schedule(3, prediction_type="v", variance_type="fixed_small")
    a = get_sampler("ddim")(FakeDenoiser(False), _x_T(), s, rng=np.random.default_rng(1))
    b = get_sampler("ddim")(FakeDenoiser(False), _x_T(), s, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)  # η = 0 draws no noise
    assert np.isfinite(a).all()


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_dpmpp_golden(steps):
    s = make_schedule(steps)
    got = get_sampler("dpmpp")(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(0))
    np.testing.assert_allclose(got, _dpmpp_reference(_x_T(), s.timesteps.tolist()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps,eta", [(2, 1.0), (4, 1.0), (4, 0.5)])
def test_dpmpp_sde_golden(steps, eta):
    s = make_schedule(steps)
    got = get_sampler("dpmpp")(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(5), eta=eta)
    want = _dpmpp_reference(_x_T(), s.timesteps.tolist(), eta=eta, noise_seed=5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(got - _dpmpp_reference(_x_T(), s.timesteps.tolist())).max() > 1e-2  # the noise really enters


def test_dpmpp_v_prediction_matches_equivalent_epsilon_model():
    # a v-model whose v equals the ε-model's implied v must give the same samples
    s_eps, s_v = make_schedule(3), make_schedule(3, prediction_type="v")
    ac = dict(zip(s_eps.timesteps.tolist(), s_eps.alphas_cumprod))
    eps_model = FakeDenoiser()

    def v_model(x, t):
        out = eps_model(x, t).astype(np.float64)
        a = ac[int(t[0])]
        xd = x.astype(np.float64)
        x0 = xd / np.sqrt(a) - np.sqrt(1 / a - 1) * out[:, :, :C]
        out[:, :, :C] = (np.sqrt(a) * xd - x0) / np.sqrt(1 - a)  # v = (√ᾱ·x − x̂₀)/√(1−ᾱ)
        return out.astype(np.float32)

    a = get_sampler("dpmpp")(FakeDenoiser(), _x_T(), s_eps, rng=np.random.default_rng(0))
    b = get_sampler("dpmpp")(v_model, _x_T(), s_v, rng=np.random.default_rng(0))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_denoiser_receives_original_timesteps(name):
    model = FakeDenoiser()
    get_sampler(name)(model, _x_T(), make_schedule(3), rng=np.random.default_rng(0))
    assert [t.tolist() for _, t in model.calls] == [[999.0] * 2, [500.0] * 2, [0.0] * 2]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("batched", [False, True])
def test_given_latents_come_back_bitwise(name, batched):
    b, t, c, h, w = SHAPE
    mask = np.ones((t, h, w), np.float32)
    mask[0] = 0.0
    mask[2, :2, 1:] = 0.0
    if batched:
        mask = np.stack([mask, np.roll(mask, 1, axis=0)])
    x_given = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    x_given[0, 0, 0, 0, 0] = -0.0  # the sign of zero must survive too
    model = FakeDenoiser()
    got = get_sampler(name)(model, _x_T(), make_schedule(3), rng=np.random.default_rng(0), mask=mask, x_given=x_given)
    m5 = np.broadcast_to(mask.reshape((-1, t, 1, h, w)), SHAPE)
    given = m5 == 0
    assert np.array_equal(got[given].view(np.uint32), x_given[given].view(np.uint32))
    for x_in, _ in model.calls:  # every denoiser call saw the clean given latents
        assert np.array_equal(x_in[given].view(np.uint32), x_given[given].view(np.uint32))
    # the fake model is elementwise, so generated cells equal an unmasked run's
    free = get_sampler(name)(FakeDenoiser(), _x_T(), make_schedule(3), rng=np.random.default_rng(0))
    np.testing.assert_allclose(got[~given], free[~given], rtol=1e-6, atol=1e-6)


def test_state_is_not_overwritten_by_the_given_latents():
    # first call: generated cells see x_T, given cells see x_given; the noise on x_T is kept in the state
    t = SHAPE[1]
    mask = np.zeros((t,) + SHAPE[3:], np.float32)
    mask[1:] = 1.0
    x_given = np.full(SHAPE, 3.0, np.float32)
    model = FakeDenoiser()
    get_sampler("ddim")(model, _x_T(), make_schedule(2), rng=np.random.default_rng(0), mask=mask, x_given=x_given)
    first = model.calls[0][0]
    np.testing.assert_array_equal(first[:, 1:], _x_T()[:, 1:])
    np.testing.assert_array_equal(first[:, 0], x_given[:, 0])


@pytest.mark.parametrize("name, opts", [("ddpm", {}), ("ddim", {"eta": 1.0})])
def test_same_seed_same_output_different_seed_different(name, opts):
    run = lambda seed: get_sampler(name)(FakeDenoiser(), _x_T(), make_schedule(3), rng=np.random.default_rng(seed), **opts)
    np.testing.assert_array_equal(run(11), run(11))
    assert not np.allclose(run(11), run(12))


def test_sampler_leaves_global_random_state_alone():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    get_sampler("ddpm")(FakeDenoiser(), _x_T(), make_schedule(3), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step(name):
    seen = []
    get_sampler(name)(FakeDenoiser(), _x_T(), make_schedule(4), rng=np.random.default_rng(0),
                      callback=lambda i, n, x: seen.append((i, n, x.dtype, x.shape)))
    assert seen == [(i, 4, np.float32, SHAPE) for i in range(4)]


def test_get_sampler_unknown_lists_names():
    with pytest.raises(InputError, match="'euler'.*ddpm, ddim, dpmpp"):
        get_sampler("euler")


@pytest.mark.parametrize("name", ["ddim", "dpmpp"])
@pytest.mark.parametrize("eta", [-0.1, float("nan"), "0", True])
def test_bad_eta(name, eta):
    with pytest.raises(InputError, match="eta"):
        get_sampler(name)(FakeDenoiser(), _x_T(), make_schedule(2), rng=np.random.default_rng(0), eta=eta)


def test_unknown_option_refused():
    with pytest.raises(InputError, match="eta"):
        get_sampler("ddpm")(FakeDenoiser(), _x_T(), make_schedule(2), rng=np.random.default_rng(0), eta=0.0)


def test_wrong_output_channels_is_backend_error():
    with pytest.raises(BackendError, match=r"\(2, 3, 4, 4, 4\).*learned_range"):
        get_sampler("ddpm")(FakeDenoiser(learned=False), _x_T(), make_schedule(2), rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"rng": 0}, "Generator"),
        ({"mask": np.ones((3, 4, 4), np.float32)}, "without x_given"),
        ({"x_given": np.zeros(SHAPE, np.float32)}, "without mask"),
        ({"mask": np.ones((3, 4, 5), np.float32), "x_given": np.zeros(SHAPE, np.float32)}, "mask must be"),
        ({"mask": np.full((3, 4, 4), 2.0, np.float32), "x_given": np.zeros(SHAPE, np.float32)}, r"\[0, 1\]"),
        ({"mask": np.full((3, 4, 4), np.nan, np.float32), "x_given": np.zeros(SHAPE, np.float32)}, "NaN"),
        ({"mask": np.ones((3, 4, 4), np.float32), "x_given": np.zeros((1, 3, 2, 4, 4), np.float32)}, "x_given has shape"),
    ],
)
def test_bad_sampler_inputs(kwargs, word):
    args = {"rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(InputError, match=word):
        get_sampler("ddpm")(FakeDenoiser(), _x_T(), make_schedule(2), **args)


def test_bad_x_T():
    with pytest.raises(InputError, match="x_T"):
        get_sampler("ddpm")(FakeDenoiser(), np.zeros((3, 2, 4, 4)), make_schedule(2), rng=np.random.default_rng(0))


def test_runtime_maths_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, vdt_runtime.schedule, vdt_runtime.samplers, vdt_runtime.masks; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_standard_normal_is_standard_normal_float32():
    z = standard_normal(np.random.default_rng(0), (3, 1001))  # odd size: the Box–Muller pair split
    assert z.dtype == np.float32 and z.shape == (3, 1001)
    big = standard_normal(np.random.default_rng(1), (400_000,)).astype(np.float64)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01
    assert abs((big**3).mean()) < 0.03 and abs((big**4).mean() - 3) < 0.05  # symmetric, normal kurtosis
    assert abs((np.abs(big) < 1).mean() - 0.6827) < 0.005  # the 1σ mass
    np.testing.assert_array_equal(standard_normal(np.random.default_rng(2), (5,)),
                                  standard_normal(np.random.default_rng(2), (5,)))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_stays_float32(name):
    seen = []

    def denoise(x, t):
        seen.append(x.dtype)
        return FakeDenoiser()(x, t)

    s = make_schedule(3)
    out = get_sampler(name)(denoise, _x_T(), s, rng=np.random.default_rng(0),
                            callback=lambda i, n, x: seen.append(x.dtype), **({"eta": 1.0} if name != "ddpm" else {}))
    assert out.dtype == np.float32 and set(seen) == {np.dtype(np.float32)}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_noise_function_replays_the_generators_draws(name):
    """rng may be a noise function (shape -> N(0, 1) draw): fed the Generator's own draws, same bytes."""
    opts = {"eta": 1.0} if name != "ddpm" else {}
    draws = np.random.default_rng(5)
    shapes = []

    def noise(shape):
        shapes.append(shape)
        return standard_normal(draws, shape)

    s = make_schedule(4)
    want = get_sampler(name)(FakeDenoiser(), _x_T(), s, rng=np.random.default_rng(5), **opts)
    got = get_sampler(name)(FakeDenoiser(), _x_T(), s, rng=noise, **opts)
    np.testing.assert_array_equal(got, want)
    assert shapes == [SHAPE] * (s.steps - 1)  # one draw per step but the last


def test_noise_function_must_return_the_states_shape():
    with pytest.raises(InputError, match="noise has shape"):
        get_sampler("ddpm")(FakeDenoiser(), _x_T(), make_schedule(3), rng=lambda shape: np.zeros((1, 1, 1, 1, 1)))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_generator_per_item(name):
    """rng may be a list of Generators, one per batch item: item b's noise comes from the b-th alone, so an item
    samples the same alone or beside others (what Pipeline.generate relies on)."""
    opts = {"eta": 1.0} if name != "ddpm" else {}
    s = make_schedule(4)
    x_T = _x_T()
    both = get_sampler(name)(FakeDenoiser(), x_T, s, rng=[np.random.default_rng(5), np.random.default_rng(6)], **opts)
    for b, seed in enumerate((5, 6)):
        alone = get_sampler(name)(FakeDenoiser(), x_T[b: b + 1], s, rng=[np.random.default_rng(seed)], **opts)
        np.testing.assert_array_equal(both[b: b + 1], alone)
    one = get_sampler(name)(FakeDenoiser(), x_T[:1], s, rng=np.random.default_rng(5), **opts)
    np.testing.assert_array_equal(one, both[:1])  # at B = 1 the same stream as the Generator itself
    with pytest.raises(InputError, match="holds 1 Generators for a batch of 2"):
        get_sampler(name)(FakeDenoiser(), x_T, s, rng=[np.random.default_rng(5)], **opts)
    with pytest.raises(InputError, match="a list of them"):
        get_sampler(name)(FakeDenoiser(), x_T, s, rng=[np.random.default_rng(5), 6], **opts)


SOFT = np.array([0.0, 0.25, 0.7, 1.0], np.float32)  # per frame of a [T=4, h, w] mask: given, two blends, generated


def _soft_case():
    shape = (2, 4, 2, 4, 4)
    x_T = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x_given = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    mask = np.broadcast_to(SOFT[:, None, None], (4, 4, 4)).copy()
    mask[1, 0, 0] = 1.0  # mixed within a frame too
    return x_T, x_given, mask


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_soft_mask_blends_given_and_state(name):
    """Mask values strictly between 0 and 1: the denoiser sees x_given·(1 − m) + x_t·m, cell by cell."""
    x_T, x_given, mask = _soft_case()
    model = FakeDenoiser()
    opts = {"eta": 1.0} if name != "ddpm" else {}
    out = get_sampler(name)(model, x_T, make_schedule(3), rng=np.random.default_rng(0), mask=mask, x_given=x_given,
                            **opts)
    m = mask[None, :, None]
    np.testing.assert_allclose(model.calls[0][0], x_given * (1 - m) + x_T * m, rtol=0, atol=1e-6)
    assert np.array_equal(out[:, 0], x_given[:, 0])  # m = 0: given, exactly
    soft = (m > 0) & (m < 1)
    assert not np.isclose(out, x_given, atol=1e-3)[np.broadcast_to(soft, out.shape)].any()


def test_soft_mask_ddim_matches_the_blend_equations():
    """DDIM η = 0 with a soft mask against the equations: the denoiser sees the blend, the state stays its own,
    and the result is the blend of x_given and the final state."""
    x_T, x_given, mask = _soft_case()
    timesteps = [0, 500, 999]
    ac, ac_prev, _ = _coeffs(timesteps)
    m = mask[None, :, None].astype(np.float64)
    g, x = x_given.astype(np.float64), x_T.astype(np.float64)
    for i in reversed(range(3)):
        x_in = (g * (1 - m) + x * m).astype(np.float32)
        eps = FakeDenoiser()(x_in, np.full(2, timesteps[i], np.float32))[:, :, :2].astype(np.float64)
        x0 = x / np.sqrt(ac[i]) - np.sqrt(1 / ac[i] - 1) * eps
        x = np.sqrt(ac_prev[i]) * x0 + np.sqrt(1 - ac_prev[i]) * eps
    want = g * (1 - m) + x * m
    got = get_sampler("ddim")(FakeDenoiser(), x_T, make_schedule(3), rng=np.random.default_rng(0), mask=mask,
                              x_given=x_given)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    hard = get_sampler("ddim")(FakeDenoiser(), x_T, make_schedule(3), rng=np.random.default_rng(0),
                               mask=np.ceil(mask), x_given=x_given)
    assert not np.allclose(got[:, 1:3], hard[:, 1:3], atol=1e-3)  # the soft cells are not treated as generated
