"""Static check of the TensorRT path against TensorRT's Python API, for machines where TensorRT cannot be installed.

Every attribute the code reads from TensorRT (on the `trt` module, or on the builder, config, network, parser,
profile, runtime, engine and context objects it makes) must be a name of the API given: type stubs (the
unpacked `tensorrt-stubs` wheel, every .pyi in it) or a compiled bindings module (the
`tensorrt_bindings/tensorrt.so` of a tensorrt-cuXX-bindings wheel, whose pybind11 names are read as strings;
a linker may merge a short name into a longer one that ends with it, so such a name counts as found there).

    python benchmarks/check_trt_api.py --api stubs/ --api tensorrt_bindings/tensorrt.so

A name found proves the API has it, not that the call works: nothing here runs TensorRT.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("vdt_runtime/backends/trt_engines.py", "vdt_runtime/backends/tensorrt.py")
# names bound to TensorRT objects in those files: the module and what it builds
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "cache", "logger"}
TRT_SELF = {"_runtime", "_engine", "_context"}


def _rooted_in_trt(node: ast.AST) -> bool:
    """An expression whose value is a TensorRT object: trt.X, builder.X, self._engine.X, trt.X.Y, ..."""
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        if isinstance(node, ast.Attribute) and node.attr in TRT_SELF and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            return True
        node = node.value if not isinstance(node, ast.Call) else node.func
    return isinstance(node, ast.Name) and node.id in TRT_OBJECTS


def used_names(paths) -> dict[str, list[str]]:
    """TensorRT attribute name -> where it is used (file:line)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr not in TRT_SELF and _rooted_in_trt(node.value):
                found.setdefault(node.attr, []).append(f"{Path(path).name}:{node.lineno}")
    return found


def api_text(path: Path) -> str:
    if path.is_dir():  # an unpacked stubs package: every .pyi in it
        return "\n".join(p.read_text(encoding="utf-8") for p in sorted(path.rglob("*.pyi")))
    if path.suffix == ".so":
        data = path.read_bytes()
        return "\n".join(s.decode() for s in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{2,}", data))
    return path.read_text(encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", type=Path, action="append", required=True, help="a folder of tensorrt .pyi stubs, a .pyi, or a bindings .so")
    args = ap.parse_args(argv)
    names = used_names(ROOT / s for s in SOURCES)
    missing = 0
    for api in args.api:
        text = api_text(api)
        suffix_ok = api.suffix == ".so"
        absent = [n for n in sorted(names) if not re.search(rf"\b{re.escape(n)}\b", text)
                  and not (suffix_ok and re.search(rf"{re.escape(n)}\b", text))]
        print(f"{api}: {len(names) - len(absent)} of {len(names)} TensorRT names used by the code are in it"
              + (f"; missing: {', '.join(f'{n} ({names[n][0]})' for n in absent)}" if absent else ""))
        missing += len(absent)
    print("names checked:", ", ".join(sorted(names)))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
