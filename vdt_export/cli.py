"""`vdt-export`: export a checkpoint (or a random model) to a bundle, and verify a bundle against torch."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vdt_runtime.backends.trt_engines import PRECISIONS as TRT_PRECISIONS
from vdt_runtime.bundle import STAGES
from vdt_runtime.cli_support import run_guarded
from vdt_runtime.errors import VDTError
from vdt_runtime.settings import PREDICTION_TYPES, VARIANCE_TYPES

from .models import CONFIGS, VDT, config_from_name
from .sources import TINY



def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="VDT weights: .pt/.pth (plain or ema/model) or .safetensors, "
                     "or a checkpoint folder (vdt + vae + scale, e.g. checkpoints/default)")
    src.add_argument("--random-init", type=int, metavar="SEED",
                     help="randomised (non-zero) weights from SEED instead of a checkpoint, for smoke tests")
    p.add_argument("--vae", type=Path, help="diffusers AutoencoderKL folder, or a weights file with --vae-config")
    p.add_argument("--vae-config", help=f"'{TINY}' (test VAE, random weights) or a config.json / its folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdt-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    onnx = sub.add_parser("onnx", help="export a VDT + VAE to an ONNX bundle (engines/NAME)")
    _add_model_args(onnx)
    onnx.add_argument("--config", choices=sorted(CONFIGS), help="named config (heads; checked against the weights)")
    onnx.add_argument("--image-size", type=int, help="pixel height == width (default: input_size × VAE downsample)")
    onnx.add_argument("--interpolate-pos-embed", action="store_true",
                      help="allow an --image-size other than the checkpoint's (recomputes the sin-cos pos_embed)")
    onnx.add_argument("--num-frames", type=int, help="trained frames of a --random-init model (default: config)")
    onnx.add_argument("--max-frames", type=int, help="exported maximum T (≥ num_frames; extends the sin-cos table)")
    onnx.add_argument("--max-batch", type=int, default=16, help="largest batch in the manifest (default 16)")
    onnx.add_argument("--prediction-type", choices=PREDICTION_TYPES,
                      help="default: a checkpoint folder's, else epsilon")
    onnx.add_argument("--variance-type", choices=VARIANCE_TYPES,
                      help="default: learned_range when the model outputs 2C channels, else fixed_small")
    onnx.add_argument("--scale-factor", type=float,
                      help="VAE latent scale (default: a checkpoint folder's, else the VAE config's, 0.18215 for SD)")
    onnx.add_argument("--sampling", metavar="SAMPLER:STEPS[:ETA]",
                      help="the bundle's recommended sampler, e.g. ddim:10 or dpmpp:20:1 (what `vdt run` uses when "
                           "the caller names none; default: none recorded, the runtime runs ddpm:50)")
    onnx.add_argument("--sampling-note", help="why that sampler (e.g. the eval that chose it); kept in the manifest")
    onnx.add_argument("--out", type=Path, required=True, help="bundle folder, e.g. engines/NAME")
    onnx.add_argument("--name", help="bundle name (default: the --out folder's name)")
    onnx.add_argument("--no-fused", dest="fused", action="store_false",
                      help="skip denoiser.fused.onnx (the onnxruntime-fused graph the CPU backend prefers)")
    onnx.add_argument("--verbose", action="store_true", help="show the exporter's own output")

    verify = sub.add_parser("verify", help="compare a bundle's ONNX stages with the torch modules")
    verify.add_argument("bundle", type=Path)
    _add_model_args(verify)
    verify.add_argument("--tol", type=float, default=1e-4, help="max abs error allowed (default 1e-4)")
    verify.add_argument("--providers", default="CPUExecutionProvider",
                        help="comma-separated onnxruntime providers to ask for (default CPUExecutionProvider)")

    fp16 = sub.add_parser("fp16", help="add FP16 stages (the graph TensorRT builds strongly typed) to a bundle")
    fp16.add_argument("bundle", type=Path)
    _add_model_args(fp16)
    fp16.add_argument("--verbose", action="store_true", help="show the exporter's own output")

    golden = sub.add_parser("golden", help="add golden cases (golden.npz + tolerances) to a bundle, for `vdt selftest`")
    golden.add_argument("bundle", type=Path)
    _add_model_args(golden)

    trt = sub.add_parser("trt", help="build TensorRT engines for a bundle into the engine cache (needs a GPU)")
    trt.add_argument("bundle", type=Path)
    trt.add_argument("--precision", action="append", choices=TRT_PRECISIONS,
                     help="repeat for several (default: every precision the bundle has an ONNX for)")
    trt.add_argument("--stage", action="append", choices=STAGES,
                     help="repeat for several (default: all three)")
    trt.add_argument("--frame-buckets", default="", help="denoiser profiles per frame bucket, e.g. 4,8,16")
    trt.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace limit (default 4)")
    trt.add_argument("--tf32", action="store_true", help="allow TF32 MatMuls in fp32 engines (Ampere+)")
    trt.add_argument("--version-compatible", action="store_true",
                     help="engine runs on later TensorRT releases of the same major")
    trt.add_argument("--hardware-compat", choices=["none", "ampere+", "same-cc"], default="none",
                     help="ampere+: one engine for every GPU of compute capability >= 8.0")
    trt.add_argument("--cache-dir", type=Path, help="engine cache (default $VDT_TRT_CACHE or ~/.cache/vdt/tensorrt)")
    trt.add_argument("--device-id", type=int, default=0)
    trt.add_argument("--force", action="store_true", help="rebuild even when a usable engine is cached")

    quant = sub.add_parser("quantize", help="add an INT8 denoiser (onnxruntime quantization) to a bundle")
    quant.add_argument("bundle", type=Path)
    quant.add_argument("--mode", choices=["dynamic", "static"], default="dynamic")
    quant.add_argument("--calibration-batches", type=int, default=8, help="static mode: random calibration feeds")
    return parser


def _vae(args, seed: int):
    from .sources import vae_source

    return vae_source(args.vae, args.vae_config, seed)


def _cmd_onnx(args) -> int:
    from vdt_runtime.settings import parse_sampling

    from .bundle import export_bundle
    from .checkpoint import load_vdt
    from .sources import load_checkpoint_folder, random_vdt
    from .vae import downsample_factor, latent_channels

    seed = args.random_init if args.random_init is not None else 0
    folder = load_checkpoint_folder(args.checkpoint) if args.checkpoint and args.checkpoint.is_dir() else None
    vae = folder.vae if folder is not None and args.vae is None else _vae(args, seed + 1)
    if vae is None:
        raise VDTError("give --vae DIR (or FILE with --vae-config) or --vae-config tiny")
    f = downsample_factor(vae)
    if args.image_size is not None and args.image_size % f:
        raise VDTError(f"--image-size {args.image_size} is not a multiple of the VAE downsample factor {f}")
    size = {} if args.image_size is None else {"input_size": args.image_size // f}
    if args.random_init is not None:
        frames = {} if args.num_frames is None else {"num_frames": args.num_frames}
        config = config_from_name(args.config or "VDT-S/2", in_channels=latent_channels(vae), **size, **frames)
        vdt = random_vdt(config, None, args.random_init)
        source = {"source": "random-init", "seed": args.random_init}
    elif folder is not None and not size:
        vdt = folder.vdt
        source = folder.training or {"source": "checkpoint folder", "checkpoint": args.checkpoint.name}
    else:
        state = folder.vdt.state_dict() if folder is not None else args.checkpoint
        heads = {"num_heads": folder.vdt.config.num_heads} if folder is not None else {}
        vdt = load_vdt(state, args.config, interpolate_pos_embed=args.interpolate_pos_embed, **size, **heads)
        source = {"source": "checkpoint", "checkpoint": args.checkpoint.name}
    if folder is None or args.vae is not None:
        source["vae"] = str(args.vae.name) if args.vae is not None else f"{args.vae_config} (random-init seed {seed + 1})"
    diffusion = dict(folder.diffusion) if folder is not None else {}
    if args.prediction_type or not diffusion:
        diffusion["prediction_type"] = args.prediction_type or "epsilon"
    if args.variance_type:
        diffusion["variance_type"] = args.variance_type
    sampling = None
    if args.sampling is not None:
        sampler, steps, eta = parse_sampling(args.sampling)
        sampling = {"sampler": sampler, "steps": steps, "eta": eta, "note": args.sampling_note}
    scale = args.scale_factor or (folder.scale_factor if folder is not None else float(vae.config.scaling_factor))
    out = export_bundle(vdt, vae, args.out, name=args.name or args.out.name, image_size=vdt.config.input_size * f,
                        scale_factor=scale, diffusion=diffusion,
                        max_frames=args.max_frames, max_batch=args.max_batch, training=source, sampling=sampling,
                        fused=args.fused,
                        verbose=args.verbose)
    print(f"wrote bundle {out} (VDT {vdt.config.depth}×{vdt.config.hidden_size}, "
          f"T ≤ {args.max_frames or vdt.config.num_frames}, image {vdt.config.input_size * f}px)")
    return 0


def _cmd_quantize(args) -> int:
    from .quantize import quantize_bundle
    from .stage_error import precision_error

    path = quantize_bundle(args.bundle, mode=args.mode, calibration_batches=args.calibration_batches)
    err = precision_error(args.bundle)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); int8 vs fp32 on random inputs: "
          f"max abs {err['max_abs']:.4g}, mean abs {err['mean_abs']:.4g} (fp32 mean |out| {err['fp32_mean_abs']:.4g}), "
          f"providers {err['providers']}")
    return 0


def _bundle_models(args) -> tuple[VDT, object]:
    """(vdt, vae or None) for an existing bundle: its checkpoint (file or folder), or the random model it was
    exported from."""
    from .bundle import read_manifest
    from .sources import bundle_models

    return bundle_models(read_manifest(args.bundle)["model"], checkpoint=args.checkpoint, random_init=args.random_init,
                         vae=args.vae, vae_config=args.vae_config)


def _cmd_fp16(args) -> int:
    from .fp16 import add_fp16

    vdt, vae = _bundle_models(args)
    errors: dict[str, dict] = {}
    for path in add_fp16(args.bundle, vdt, vae, verbose=args.verbose, errors=errors):
        e = errors[path.name.split(".")[0]]
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); fp16 vs fp32 on random inputs: max abs "
              f"{e['max_abs']:.3g} ({e['rel_max']:.2%} of max |fp32|), mean abs {e['mean_abs']:.3g} "
              f"({e['rel_mean']:.2%} of mean |fp32|), providers {e['providers']}")
    if vae is None:
        print("VAE stages skipped (no --vae / --vae-config)")
    return 0


def _cmd_trt(args) -> int:
    from .tensorrt import build_bundle_engines

    buckets = tuple(int(b) for b in args.frame_buckets.split(",") if b.strip())
    rows = build_bundle_engines(args.bundle, precisions=tuple(args.precision) if args.precision else None,
                                stages=tuple(args.stage) if args.stage else STAGES,
                                frame_buckets=buckets, cache_dir=args.cache_dir, device_id=args.device_id,
                                force=args.force, workspace_gb=args.workspace_gb, tf32=args.tf32,
                                version_compatible=args.version_compatible, hardware_compat=args.hardware_compat)
    for stage, precision, path in rows:
        print(f"{stage:<12} {precision}  {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _cmd_golden(args) -> int:
    from vdt_runtime.bundle import Bundle

    from .bundle import read_manifest, set_golden
    from .golden import GOLDEN_FILE, make_golden

    models = _bundle_models(args)
    section = make_golden(Bundle.load(args.bundle, verify=True), *models)  # its files checked before anything is added
    set_golden(args.bundle, read_manifest(args.bundle), section, written={GOLDEN_FILE})  # golden.npz rewritten
    Bundle.load(args.bundle, verify=True)  # what was written loads, and its files match
    size = (args.bundle / GOLDEN_FILE).stat().st_size
    print(f"wrote {args.bundle / GOLDEN_FILE} ({size / 1024:.1f} KiB, cases {section['cases']} + end-to-end "
          f"{section['end_to_end']}); tolerances (max abs / mean abs), {section['measured']['margin']:g}x the worst "
          f"error measured here on {section['measured']['machine']}:")
    for precision, checks in section["tolerances"].items():
        print(f"  {precision:<5} " + ", ".join(f"{c} {t['max_abs']:.3g}/{t['mean_abs']:.3g}" for c, t in checks.items()))
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify_bundle

    vdt, vae = _bundle_models(args)
    report = verify_bundle(args.bundle, vdt, vae, tol=args.tol, providers=args.providers.split(","))
    print(report.table())
    if vae is None:
        print("VAE stages skipped (no --vae / --vae-config)")
    print("PASS" if report.passed else "FAIL")
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"onnx": _cmd_onnx, "verify": _cmd_verify, "quantize": _cmd_quantize, "fp16": _cmd_fp16,
                "trt": _cmd_trt, "golden": _cmd_golden}
    # ValueError / OSError: what torch, safetensors and onnx raise for a bad or missing file the user named
    return run_guarded(lambda: commands[args.command](args), expected=(VDTError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
