"""The samplers are array-library agnostic: run them on arrays whose namespace admits only a few functions and
whose type refuses every direct NumPy function call, and they must give bit-identical results to plain NumPy.

This is what lets CuPy arrays from a GPU backend run the same sampler code with the state on the device; the
CuPy run itself (against NumPy, same noise) is in benchmarks/gpu_check.py, for a GPU machine."""
from __future__ import annotations

import types

import numpy as np
import pytest

from vdt_runtime._xp import namespace, to_numpy
from vdt_runtime.samplers import SAMPLERS, standard_normal
from vdt_runtime.schedule import make_schedule

# functions the sampler code may call through its namespace: all exist in NumPy and CuPy under these names
ALLOWED = ("asarray", "where", "all", "any", "isfinite", "isnan", "exp", "sqrt", "log1p", "cos", "sin",
           "multiply", "empty", "full", "stack", "concatenate")
# what an operator or an ndarray method may dispatch to (operators exist on every array library's arrays)
OPERATOR_UFUNCS = {"add", "subtract", "multiply", "divide", "true_divide", "negative", "equal", "less", "less_equal",
                   "greater", "greater_equal", "bitwise_or", "logical_or", "bitwise_and"}


class Strict(np.ndarray):
    """An ndarray that refuses every NumPy function except operators: only its namespace may compute on it."""

    def __array_namespace__(self, api_version=None):
        return STRICT

    def __array_function__(self, func, types_, args, kwargs):
        raise AssertionError(f"numpy.{func.__name__} was called on a sampler array instead of its namespace")

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if method != "__call__" or ufunc.__name__ not in OPERATOR_UFUNCS:
            raise AssertionError(f"numpy.{ufunc.__name__}.{method} was called on a sampler array, not an operator")
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        return _wrap(getattr(ufunc, method)(*(_plain(i) for i in inputs), **kwargs))


def _plain(a):
    if isinstance(a, (list, tuple)):  # stack / concatenate take a sequence of arrays
        return type(a)(_plain(x) for x in a)
    return a.view(np.ndarray) if isinstance(a, Strict) else a


def _wrap(a):
    return a.view(Strict) if isinstance(a, np.ndarray) else a


CALLS: dict[str, int] = {}


def _strict_function(name: str):
    def call(*args, **kwargs):
        CALLS[name] = CALLS.get(name, 0) + 1
        args = [_plain(a) for a in args]
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        return _wrap(getattr(np, name)(*args, **kwargs))

    return call


STRICT = types.SimpleNamespace(float32=np.float32, **{name: _strict_function(name) for name in ALLOWED})


def _denoiser(out_channels: int):
    """A fake denoiser mixing x and t nonlinearly, returning the caller's array type."""
    def denoise(x, t):
        wrap = type(x) is Strict
        x, t = _plain(x), _plain(t)
        assert x.dtype == np.float32 and t.dtype == np.float32
        out = np.tanh(np.concatenate([x] * (out_channels // x.shape[2]), axis=2) * 0.7 + t[:, None, None, None, None] / 999)
        return _wrap(out.astype(np.float32)) if wrap else out.astype(np.float32)
    return denoise


CASES = [("ddpm", {}, "learned_range", "epsilon"), ("ddpm", {}, "fixed_small", "v"),
         ("ddim", {"eta": 0.0}, "learned_range", "epsilon"), ("ddim", {"eta": 0.5}, "fixed_small", "v"),
         ("dpmpp", {"eta": 0.0}, "learned_range", "epsilon"), ("dpmpp", {"eta": 1.0}, "fixed_small", "v")]


@pytest.mark.parametrize("sampler,opts,variance,prediction", CASES)
@pytest.mark.parametrize("masked", ["binary", "soft", None])
@pytest.mark.parametrize("per_item", [False, True], ids=["generator", "generator-per-item"])
def test_strict_namespace_bit_identical(sampler, opts, variance, prediction, masked, per_item):
    schedule = make_schedule(steps=4, variance_type=variance, prediction_type=prediction)
    rng = np.random.default_rng(3)
    shape = (2, 3, 4, 4, 4)
    x_T = standard_normal(rng, shape)
    kw = {}
    if masked:
        mask = (rng.random((3, 4, 4)) > 0.5).astype(np.float32)
        if masked == "soft":
            mask = mask * 0.5 + 0.25 * (rng.random((3, 4, 4)) > 0.5)
        kw = {"mask": mask, "x_given": rng.standard_normal(shape).astype(np.float32)}
    out_c = 8 if variance == "learned_range" else 4
    noise = (lambda: [np.random.default_rng(7), np.random.default_rng(8)]) if per_item else \
        (lambda: np.random.default_rng(7))
    seen = []
    ref = SAMPLERS[sampler](_denoiser(out_c), x_T, schedule, rng=noise(),
                            callback=lambda i, n, x: seen.append(x.copy()), **kw, **opts)
    CALLS.clear()
    strict_kw = {k: v.view(Strict) for k, v in kw.items()}
    strict_seen = []
    out = SAMPLERS[sampler](_denoiser(out_c), x_T.view(Strict), schedule, rng=noise(),
                            callback=lambda i, n, x: strict_seen.append(type(x)), **strict_kw, **opts)
    assert type(out) is Strict, "the result left the namespace's array type"
    assert strict_seen == [Strict] * 4
    np.testing.assert_array_equal(out.view(np.ndarray), ref)
    assert CALLS["full"] == 4 and CALLS["asarray"] > 0 and (CALLS.get("where", 0) > 0) == bool(masked)


def test_strict_type_catches_a_numpy_call():
    """The guard itself works: a direct NumPy function on a Strict array is refused."""
    with pytest.raises(AssertionError, match="numpy.exp"):
        np.exp(np.ones(3).view(Strict))
    with pytest.raises(AssertionError, match="numpy.where"):
        np.where(np.ones(3).view(Strict) > 0, 1.0, 0.0)


def test_standard_normal_same_stream_through_any_namespace():
    a = standard_normal(np.random.default_rng(5), (3, 5))
    b = standard_normal(np.random.default_rng(5), (3, 5), STRICT)
    assert type(b) is Strict
    np.testing.assert_array_equal(a, b.view(np.ndarray))


def test_namespace_of_plain_arrays_is_numpy():
    assert namespace(np.zeros(2), None) is np
    assert namespace(None, np.zeros(2).view(Strict)) is STRICT
    assert namespace([1.0, 2.0]) is np
    plain = np.zeros(2)
    assert to_numpy(plain) is plain


@pytest.mark.parametrize("precision", ["fp32", "int8"])  # int8: one denoiser call per item (xp.concatenate)
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_pipeline_keeps_the_state_in_the_backends_namespace(precision, sampler):
    """The pipeline's device path on the CPU: a denoiser backend whose arrays are Strict (as a GPU backend's are
    CuPy) gets and returns them every step, no NumPy function touches the sampler state, and the video is
    byte-identical to the NumPy path's."""
    from vdt_runtime import Pipeline

    frames = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    kw = dict(cond=4, total=8, steps=4, sampler=sampler, seed=11, **({"eta": 1.0} if sampler != "ddpm" else {}))
    with Pipeline.load(backend="cpu", precision=precision, options={"threads": 1}) as pipe:
        want = pipe.predict(frames, **kw).frames
        den, run, seen = pipe.backends["denoiser"], pipe.backends["denoiser"].run, []

        def strict_run(inputs):
            seen.append({type(v) for v in inputs.values()})
            return {k: _wrap(v) for k, v in run({k: _plain(v) for k, v in inputs.items()}).items()}

        den.array_namespace, den.run = (lambda: STRICT), strict_run
        got = pipe.predict(frames, **kw).frames
    assert seen and all(types_ == {Strict} for types_ in seen)
    np.testing.assert_array_equal(got, want)
