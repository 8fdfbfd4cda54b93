"""Safety: the runtime never unpickles, checkpoints load without arbitrary objects, hashes are checked before use."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from vdt_runtime import Pipeline, cli
from vdt_runtime import bundle as bundle_module
from vdt_runtime.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]

# Runs the whole runtime (library + CLI, every input path incl. a .npy mask) with torch unimportable and
# every unpickling entry point replaced by a tripwire; a pickled .npy mask must be refused, not loaded.
NO_PICKLE_CHILD = r"""
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import _pickle, pickle
tripped = []
def tripwire(*args, **kwargs):
    tripped.append(args[:1])
    raise AssertionError("something tried to unpickle")
class Unpickler(pickle.Unpickler):
    def load(self):
        tripwire()
for module in (pickle, _pickle):
    module.load = module.loads = tripwire
    module.Unpickler = Unpickler
import numpy as np
real_np_load = np.load
def np_load(*args, allow_pickle=False, **kwargs):
    if allow_pickle is not False:
        tripwire("np.load(allow_pickle=True)")
    return real_np_load(*args, allow_pickle=False, **kwargs)
np.load = np_load
try:  # the tripwire itself works
    pickle.loads(b"\x80\x04K\x01.")
    raise SystemExit("tripwire not armed")
except AssertionError:
    tripped.clear()

from vdt_runtime import Pipeline, cli
bundle, work = sys.argv[1], sys.argv[2]
clip = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
pipe = Pipeline.load(bundle, backend="cpu", options={"threads": 1}, verify=True)
pipe.predict(clip, cond=2, total=4, steps=1)
pipe.rollout(clip, total=10, cond=2, steps=1)
pipe.inpaint(clip[:2], mask=np.ones((2, 8, 8)), steps=1)
common = ["--bundle", bundle, "--backend", "cpu", "--steps", "1", "--no-progress"]
assert cli.main(["run", "--task", "predict", "--input", work + "/in.gif", "--cond", "2", "--total", "4",
                 "--out", work + "/out.gif", *common]) == 0
assert cli.main(["run", "--task", "inpaint", "--input", work + "/in.gif", "--mask", work + "/mask.npy",
                 "--out", work + "/out.mp4", *common]) == 0
assert cli.main(["run", "--task", "inpaint", "--input", work + "/in.gif", "--mask", work + "/pickled.npy",
                 "--out", work + "/never.gif", *common]) == 2
assert cli.main(["info", bundle, "--verify", "--backend", "cpu"]) == 0
assert not tripped, tripped
assert sys.modules["torch"] is None
print("NO-PICKLE-OK")
"""


def test_runtime_never_unpickles_and_never_imports_torch(tiny_bundle, tmp_path):
    from vdt_runtime.video import write_video

    write_video(tmp_path / "in.gif", np.random.default_rng(2).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "mask.npy", np.ones((4, 8, 8), np.uint8))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", NO_PICKLE_CHILD, str(tiny_bundle), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "NO-PICKLE-OK" in proc.stdout, proc.stderr[-3000:]
    assert "cannot read mask" in proc.stderr and "pickled.npy" in proc.stderr  # refused, with a typed error
    assert not (tmp_path / "never.gif").exists()


class _Payload:
    """Unpickling this runs exec(), which writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    torch = pytest.importorskip("torch")
    from vdt_export.checkpoint import CheckpointError, load_state_dict

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"pos_embed": torch.zeros(1, 4, 8), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*weights_only=True"):
        load_state_dict(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: a plain load WOULD run the payload
    assert marker.read_text() == "pwned"


def _tampered(tiny_bundle, tmp_path) -> Path:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    target = copy / "vae_decoder.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01  # same size: only the hash can tell
    target.write_bytes(bytes(data))
    return copy


@pytest.fixture
def sessions(monkeypatch):
    """Records every onnxruntime session created (the files it was asked to load), in order with hashing."""
    events = []
    real_session, real_hash = onnxruntime.InferenceSession, bundle_module.sha256_file

    def session(path, *args, **kwargs):
        events.append(("session", Path(path).name))
        return real_session(path, *args, **kwargs)

    def hashed(path, *args, **kwargs):
        events.append(("hash", Path(path).name))
        return real_hash(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(bundle_module, "sha256_file", hashed)
    return events


def test_verify_checks_every_hash_before_any_file_is_used(tiny_bundle, sessions):
    Pipeline.load(tiny_bundle, backend="cpu", verify=True)
    kinds = [kind for kind, _ in sessions]
    listed = json.loads((tiny_bundle / "manifest.json").read_text())["files"]
    assert sorted(name for kind, name in sessions if kind == "hash") == sorted(listed)
    assert kinds.index("session") > max(i for i, k in enumerate(kinds) if k == "hash")


def test_tampered_bundle_with_verify_never_reaches_onnxruntime(tiny_bundle, tmp_path, sessions):
    bundle = _tampered(tiny_bundle, tmp_path)
    with pytest.raises(BundleError, match=r"'vae_decoder.onnx' fails its hash check"):
        Pipeline.load(bundle, backend="cpu", verify=True)
    assert not any(kind == "session" for kind, _ in sessions)


def test_cli_info_verify_refuses_tampered_bundle_before_loading(tiny_bundle, tmp_path, sessions, capsys):
    bundle = _tampered(tiny_bundle, tmp_path)
    assert cli.main(["info", str(bundle), "--verify", "--backend", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "vae_decoder.onnx" in err and "hash check" in err
    assert not any(kind == "session" for kind, _ in sessions)
    assert cli.main(["info", str(tiny_bundle), "--verify", "--backend", "cpu"]) == 0
    listed = json.loads((tiny_bundle / "manifest.json").read_text())["files"]
    assert f"all {len(listed)} files match" in capsys.readouterr().out
