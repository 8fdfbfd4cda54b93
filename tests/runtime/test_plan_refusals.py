"""`Request.plan` refuses everything the run path would (issue 19): a planned request cannot be refused later.

The run path is `Pipeline.generate` and every function of the modules it runs requests through. The test reads their
`raise` sites and `check*` calls from the source (AST) and keeps them in sync with REFUSALS below: a new refusal in the
run path fails this test until it is listed, and each listed one is triggered here to show what decides it:
- "plan": a Request refused by the run path is refused by `Request.plan` first (same error type);
- "argument": generate's own argument (not a Request at all, or not a list), refused before any backend runs;
- "bundle": the bundle or backend misbehaved (BundleError/BackendError), not a refusal of what the caller sent.
"""
from __future__ import annotations

import ast
import inspect
import textwrap

import numpy as np
import pytest

from vdt_runtime import Request
from vdt_runtime.errors import BackendError, BundleError, InputError

CLIP = np.random.default_rng(3).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def _run_path():
    """(label, source) of generate and of each module the run path goes through."""
    import vdt_runtime.pipeline as pipeline

    yield "pipeline.Pipeline.generate", inspect.getsource(pipeline.Pipeline.generate)
    for name in ("runner", "rollout"):
        try:
            module = __import__(f"vdt_runtime.{name}", fromlist=["_"])
        except ImportError:
            continue
        yield name, inspect.getsource(module)


def _text(node: ast.AST) -> str:
    """The literal text of a raise's message (f-string holes dropped), or the called check's name."""
    parts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return "".join(parts)


def _own_nodes(fn: ast.AST):
    """The nodes of a function's body, not those of the functions nested in it (they are visited on their own)."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.extend(ast.iter_child_nodes(node))


def refusal_sites() -> set[tuple[str, str, str]]:
    """(function, error type or check name, literal message text) of every refusal on the run path."""
    sites = set()
    for label, source in _run_path():
        tree = ast.parse(textwrap.dedent(source))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in _own_nodes(fn):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    sites.add((fn.name, ast.unparse(exc), _text(node.exc)))
                elif isinstance(node, ast.Call):
                    name = ast.unparse(node.func).split(".")[-1]
                    if name.lstrip("_").startswith("check"):
                        sites.add((fn.name, name, _text(node)))
    return sites


def _over_long_rollout():
    return [Request(task="rollout", frames=CLIP[:3], cond=2, total=1025, steps=2)]


# (function, error type, literal text) -> (kind, the call that triggers it: pipe -> anything)
REFUSALS = {
    ("generate", "InputError", "generate takes a list of Requests; wrap a single one in [...]"):
        ("argument", lambda pipe: pipe.generate(Request(task="unconditional", total=2, steps=2))),
    ("generate", "InputError", "generate takes a list of Requests, got "):
        ("argument", lambda pipe: pipe.generate(None)),
    ("generate", "InputError", "requests[] is a , not a vdt_runtime.Request"):
        ("argument", lambda pipe: pipe.generate([{"task": "predict"}])),
    ("generate", "type(e)", "requests[]: "):  # a plan's refusal, re-raised naming the request's index
        ("plan", _over_long_rollout),
    # the backends answered a shape the manifest does not declare (tests/runtime/test_bad_inputs.py)
    ("_check_output", "BundleError", "stage  returned shape  where the manifest declares  for this call; the bundle's "
                                     "graph does not match its manifest"): ("bundle", None),
    ("denoise", "_check_output", "denoiser"): ("bundle", None),
    ("_batched", "_check_output", ""): ("bundle", None),
}


def test_every_refusal_on_the_run_path_is_listed():
    found = refusal_sites()
    unlisted = sorted(found - set(REFUSALS))
    stale = sorted(set(REFUSALS) - found)
    assert not unlisted, f"new refusal(s) on the run path: list them in REFUSALS (and move request rules into " \
                         f"Request.plan): {unlisted}"
    assert not stale, f"REFUSALS lists refusals the run path no longer has: {stale}"


@pytest.mark.parametrize("site", sorted(REFUSALS), ids=lambda s: f"{s[0]}:{s[2][:30]}")
def test_each_refusal_is_made_before_the_run(tiny_pipeline, monkeypatch, site):
    kind, trigger = REFUSALS[site]
    if kind == "bundle":
        assert site[1] in (BundleError.__name__, BackendError.__name__, "_check_output")
        return
    for backend in tiny_pipeline.backends.values():
        monkeypatch.setattr(backend, "run", lambda feed: pytest.fail("a backend ran before the refusal"))
    if kind == "argument":
        with pytest.raises(InputError):
            trigger(tiny_pipeline)
        return
    requests = trigger()
    with pytest.raises(InputError) as by_generate:
        tiny_pipeline.generate(requests)
    refused = []
    for r in requests:
        try:
            r.plan(tiny_pipeline.bundle)
        except InputError as e:
            refused.append(str(e))
    assert refused and refused[0] in str(by_generate.value), "generate refused what Request.plan accepted"


def test_over_long_rollout_is_refused_by_plan_and_streamed_one_is_not(tiny_pipeline):
    """The server trusts plan: a 100,000-frame in-memory rollout passed it and then failed the whole batch."""
    r = Request(task="rollout", frames=CLIP[:3], cond=2, total=100_000, steps=2)
    with pytest.raises(InputError, match="maximum 1024 returned in memory"):
        r.plan(tiny_pipeline.bundle)
    assert r.plan(tiny_pipeline.bundle, streamed=True).total == 100_000
    with pytest.raises(InputError, match="only task 'rollout' streams"):
        Request(task="unconditional", total=4).plan(tiny_pipeline.bundle, streamed=True)
