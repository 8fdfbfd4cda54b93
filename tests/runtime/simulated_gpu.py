"""A simulated NVIDIA machine for tests, simulated at the machine's boundary, never by patching vdt's functions.

- The driver: a stand-in libcuda.so.1 (standin_cuda.c, compiled here with the system C compiler) first on
  LD_LIBRARY_PATH of a child process, reporting `gpus` GPUs. vdt's driver probe and onnxruntime-gpu both find it;
  onnxruntime-gpu's CUDA and TensorRT providers then really fail to load (no cuBLAS, cuDNN or TensorRT here), as for
  a user with a broken CUDA install, and the CPU provider really runs in their place.
- The providers onnxruntime offers: `offers` replaces onnxruntime.get_available_providers in the child (the
  library's own answer, e.g. CUDA offered and TensorRT not, or the reverse); None keeps onnxruntime-gpu's real list.
- What onnxruntime is asked for: with `record`, every InferenceSession the child creates appends the file name,
  the providers and provider options it was given, and the providers it really got (get_providers()) to that file.

`Box(tmp, gpus=1, offers=None).python(code)` runs `code` in such a child and returns its CompletedProcess;
`.vdt(*argv)` runs the vdt CLI there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

# runs first in the child: onnxruntime's offered providers, and a record of each session's request and result
PRELUDE = r'''
import json as _json, os as _os
import onnxruntime as _ort
if _os.environ.get("VDT_SIM_OFFERS"):
    _offers = _os.environ["VDT_SIM_OFFERS"].split(",")
    _ort.get_available_providers = lambda: list(_offers)
if _os.environ.get("VDT_SIM_RECORD"):
    _Session = _ort.InferenceSession
    class _Recorded(_Session):
        def __init__(self, path, sess_options=None, providers=None, provider_options=None, **kw):
            super().__init__(path, sess_options, providers=providers, provider_options=provider_options, **kw)
            with open(_os.environ["VDT_SIM_RECORD"], "a") as f:
                f.write(_json.dumps({"file": _os.path.basename(str(path)), "providers": providers,
                                     "provider_options": provider_options, "got": self.get_providers()}) + "\n")
    _ort.InferenceSession = _Recorded
'''


def standin_driver(folder: Path) -> Path:
    """Compile standin_cuda.c into folder/libcuda.so.1 (skips the test where no C compiler is installed)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in libcuda.so.1")
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / "libcuda.so.1"
    if not lib.exists():
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(HERE / "standin_cuda.c")], check=True)
    return lib


@dataclass
class Box:
    """A child-process machine: `gpus` GPUs from the stand-in driver, `offers` from onnxruntime (None: real list)."""

    driver_dir: Path
    gpus: int = 1
    offers: tuple[str, ...] | None = None
    record: Path | None = None

    def env(self, **extra) -> dict[str, str]:
        env = dict(os.environ, VDT_STANDIN_GPUS=str(self.gpus), PYTHONWARNINGS="always::RuntimeWarning",
                   LD_LIBRARY_PATH=os.pathsep.join([str(self.driver_dir), os.environ.get("LD_LIBRARY_PATH", "")]))
        env.pop("VDT_SIM_OFFERS", None)
        if self.offers is not None:
            env["VDT_SIM_OFFERS"] = ",".join(self.offers)
        if self.record is not None:
            env["VDT_SIM_RECORD"] = str(self.record)
        return {**env, **extra}

    def python(self, code: str, *argv: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", PRELUDE + code, *argv], capture_output=True, text=True,
                              env=self.env(**env), timeout=timeout, cwd=HERE.parent.parent)

    def vdt(self, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return self.python("import sys\nfrom vdt_runtime.cli import main\nraise SystemExit(main(sys.argv[1:]))",
                           *argv, timeout=timeout)

    def result(self, code: str) -> dict:
        """Run `code`, which prints one JSON object last; that object (the child must exit 0)."""
        done = self.python(code)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def sessions(self) -> list[dict]:
        """The recorded sessions (what was asked, what was got), in creation order."""
        return [json.loads(line) for line in self.record.read_text().splitlines()] if self.record else []
