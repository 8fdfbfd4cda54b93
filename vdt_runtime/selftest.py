"""Self-test: replay a bundle's golden cases (golden.npz, made by the torch model in fp32 at export) on the
backends a pipeline really opened, and judge each against the manifest's per-precision tolerance.

Per stage (denoiser, vae_encoder, vae_decoder) the cases run through that stage's backend; the end-to-end case
runs a short seeded predict through the runtime's own sampler with the denoiser backend and compares the final
latents. A non-finite output is its own failure, checked before any tolerance. `vdt selftest`,
`Pipeline.load(..., selftest=True)` and the TensorRT backend (after building an engine) all call `run_selftest`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from vdt_runtime._xp import to_numpy
from vdt_runtime.bundle import STAGES, Bundle
from vdt_runtime.bundle._manifest import GOLDEN_CHECKS
from vdt_runtime.errors import BundleError, SelfTestError
from vdt_runtime.limits import shorten
from vdt_runtime.samplers import per_item_normal, prepare
from vdt_runtime.settings import Sampling

__all__ = ["GOLDEN_CHECKS", "Check", "Golden", "Report", "end_to_end", "load_golden", "run_selftest"]
MAX_GOLDEN_BYTES = 64 << 20  # a golden.npz is tens of kB; refuse anything near this before reading it
E2E = "end_to_end"


@dataclass(frozen=True)
class Golden:
    """A bundle's golden cases: arrays by "<stage>.<i>.<tensor>" / "end_to_end.<name>", and the manifest section."""

    arrays: dict[str, np.ndarray]
    section: dict

    def cases(self, stage: str) -> int:
        return int(self.section["cases"][stage])

    @property
    def tolerances(self) -> dict:
        return self.section["tolerances"]

    def case(self, stage: str, i: int, names) -> dict[str, np.ndarray]:
        return {n: self.arrays[f"{stage}.{i}.{n}"] for n in names}


def load_golden(bundle: Bundle) -> Golden | None:
    """The bundle's golden cases, or None when its manifest has no "golden" section. Read with
    allow_pickle=False; every array the manifest's cases need must be there (BundleError naming the missing one)."""
    section = bundle.manifest.get("golden")
    if section is None:
        return None
    path = bundle.path / section["file"]
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise BundleError(f"golden file {section['file']!r} has {path.stat().st_size} bytes; at most {MAX_GOLDEN_BYTES}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise BundleError(f"cannot read golden file {section['file']!r}: {shorten(str(e))}") from None
    need = [f"{s}.{i}.{spec.name}" for s in STAGES for i in range(section["cases"][s])
            for spec in (*bundle.stage(s).inputs, bundle.stage(s).outputs[0])]
    need += [f"{E2E}.{n}" for n in ("x_given", "mask", "latents")]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise BundleError(f"golden file {section['file']!r} lacks array(s) {shorten(missing)}")
    return Golden(arrays, section)


def end_to_end(bundle: Bundle, golden_section: Mapping, arrays: Mapping[str, np.ndarray],
               denoise: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """The end-to-end case's final latents [1, T, C, h, w]: a predict (mask and given latents from the golden file)
    sampled with the case's sampler, steps, η and seed by the runtime's own sampler, calling `denoise`. The export
    side calls this with the torch model to make the reference; the self-test with the backend."""
    e = golden_section["end_to_end"]
    run = prepare(Sampling(e["sampler"], e["steps"], e["eta"]), bundle.diffusion)
    rngs = [np.random.default_rng(e["seed"])]
    x_T = per_item_normal(rngs, bundle.latent_shape(e["frames"]))
    out = run(denoise, x_T, rng=rngs, mask=arrays[f"{E2E}.mask"][None], x_given=arrays[f"{E2E}.x_given"])
    return to_numpy(out)


@dataclass(frozen=True)
class Check:
    """One stage (or the end-to-end case) at the precision that ran it, judged against its tolerance."""

    stage: str
    precision: str
    max_abs: float
    mean_abs: float
    nonfinite: int  # output values that are NaN or ±inf
    tol_max: float | None = None  # None: no tolerance recorded for this precision (a failure)
    tol_mean: float | None = None

    @property
    def problem(self) -> str | None:
        """Why it fails, naming the stage, the error and the tolerance; None when it passes."""
        where = f"{self.stage} ({self.precision})"
        if self.nonfinite:
            return f"{where}: non-finite output ({self.nonfinite} NaN/inf values), before any tolerance"
        if self.tol_max is None:
            return f"{where}: the bundle records no {self.precision} tolerance for {self.stage}"
        if self.max_abs > self.tol_max or self.mean_abs > self.tol_mean:
            return (f"{where}: max abs error {self.max_abs:.3g} (tolerance {self.tol_max:.3g}), mean abs error "
                    f"{self.mean_abs:.3g} (tolerance {self.tol_mean:.3g})")
        return None

    @property
    def passed(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict:
        return {"stage": self.stage, "precision": self.precision, "max_abs": self.max_abs,
                "mean_abs": self.mean_abs, "nonfinite": self.nonfinite, "tol_max": self.tol_max,
                "tol_mean": self.tol_mean, "passed": self.passed}


@dataclass(frozen=True)
class Report:
    """Every check of one self-test, and what ran each stage."""

    bundle: str
    checks: tuple[Check, ...]
    providers: dict[str, tuple[str, ...]]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.problem for c in self.checks if not c.passed]

    def table(self) -> str:
        lines = [f"{'check':<12} {'precision':<9} {'max abs err':>12} {'tolerance':>10} {'mean abs err':>12} "
                 f"{'tolerance':>10}  result"]
        for c in self.checks:
            tm, tn = ("-", "-") if c.tol_max is None else (f"{c.tol_max:.3g}", f"{c.tol_mean:.3g}")
            result = "PASS" if c.passed else ("NON-FINITE" if c.nonfinite else "FAIL")
            lines.append(f"{c.stage:<12} {c.precision:<9} {c.max_abs:>12.3e} {tm:>10} {c.mean_abs:>12.3e} "
                         f"{tn:>10}  {result}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """SelfTestError naming every failing check."""
        if not self.passed:
            raise SelfTestError(f"self-test of bundle {self.bundle!r} failed: " + "; ".join(self.failures))

    def to_json(self) -> dict:
        return {"passed": self.passed, "checks": [c.to_json() for c in self.checks]}


def compare(stage: str, precision: str, got: list[np.ndarray], want: list[np.ndarray],
            tolerances: Mapping | None) -> Check:
    """Errors of outputs `got` against references `want` (float64), non-finite values counted first."""
    got = [np.asarray(to_numpy(g), np.float64) for g in got]
    bad = int(sum(np.size(g) - np.count_nonzero(np.isfinite(g)) for g in got))
    shapes = [(g.shape, w.shape) for g, w in zip(got, want) if g.shape != w.shape]
    if shapes:
        raise SelfTestError(f"{stage} ({precision}): output shape {shapes[0][0]}, golden reference {shapes[0][1]}")
    errs = [np.abs(g - w.astype(np.float64)) for g, w in zip(got, want)]
    finite = [e[np.isfinite(e)] for e in errs]
    max_abs = max((float(e.max()) for e in finite if e.size), default=0.0)
    total = sum(e.size for e in finite)
    mean_abs = float(sum(e.sum() for e in finite) / total) if total else 0.0
    tol = (tolerances or {}).get(precision, {}).get(stage)
    return Check(stage, precision, max_abs, mean_abs, bad,
                 None if tol is None else float(tol["max_abs"]), None if tol is None else float(tol["mean_abs"]))


def run_selftest(bundle: Bundle, backends: Mapping, *, golden: Golden | None = None,
                 with_end_to_end: bool = True) -> Report:
    """Run the golden cases of every stage in `backends` (stage -> Backend) on it, and the end-to-end case when the
    denoiser is among them; `golden` defaults to the bundle's own (SelfTestError when it has none)."""
    golden = golden or load_golden(bundle)
    if golden is None:
        raise SelfTestError(f"bundle {bundle.name!r} has no golden cases to self-test with; add them with "
                            f"`vdt-export golden {bundle.path} --checkpoint ...`")
    checks = []
    for stage in STAGES:
        if stage not in backends:
            continue
        backend = backends[stage]
        names, out = [s.name for s in backend.inputs], backend.outputs[0].name
        got, want = [], []
        for i in range(golden.cases(stage)):
            case = golden.case(stage, i, [*names, out])
            got.append(backend.run({n: case[n].astype(np.float32) for n in names})[out])
            want.append(case[out])
        checks.append(compare(stage, backend.precision, got, want, golden.tolerances))
    if with_end_to_end and "denoiser" in backends:
        den = backends["denoiser"]
        names, out = [s.name for s in den.inputs], den.outputs[0].name
        got = end_to_end(bundle, golden.section, golden.arrays,
                         lambda x, t: to_numpy(den.run({names[0]: x, names[1]: t})[out]))
        checks.append(compare(E2E, den.precision, [got], [golden.arrays[f"{E2E}.latents"]], golden.tolerances))
    return Report(bundle.name, tuple(checks), {s: tuple(b.providers) for s, b in backends.items()})
