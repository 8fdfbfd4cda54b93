"""The tiny randomised model the tests share, and its committed bundle (tests/data/tiny_bundle).

The runtime tests open the committed bundle, so they need no torch; the export tests rebuild the same models from
the same seeds, and tests/contracts/test_tiny_fixture.py holds the two to each other. Regenerate the bundle after
a change to the exporter or the bundle format with:

    python tests/tiny_fixture.py
"""
from __future__ import annotations

import sys
from pathlib import Path

SEED = 0
BUNDLE = Path(__file__).resolve().parent / "data" / "tiny_bundle"
IMAGE_SIZE = 16


def make_models():
    """(vdt, vae): VDT-tiny (input_size 8, patch 2, 8 frames, 4 channels) + a /2 VAE, all weights randomised."""
    from vdt_export.models import VDT, config_from_name
    from vdt_export.sources import build_vae, randomize_, tiny_vae_config

    vdt = VDT(config_from_name("VDT-tiny", input_size=8, num_frames=8, in_channels=4))
    randomize_(vdt, seed=SEED)
    vae = randomize_(build_vae(tiny_vae_config()), seed=SEED + 1)
    return vdt.eval(), vae.eval()


def export(out: Path = BUNDLE) -> Path:
    """Export `make_models()` as the tiny bundle (image_size 16, T <= 8) into `out`."""
    from vdt_export.bundle import export_bundle

    vdt, vae = make_models()
    return export_bundle(vdt, vae, out, name="tiny", image_size=IMAGE_SIZE,
                         training={"source": "random-init", "seed": SEED})


if __name__ == "__main__":
    print(export(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLE))
