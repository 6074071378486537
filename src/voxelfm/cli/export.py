"""``voxelfm export``: convert backbone weights between the reference ``.pth`` layout and voxelfm folders.

Examples::

    voxelfm export --weights 99999.pth --config config.yaml -o voxelfm-vitb/
    voxelfm export --weights voxelfm-vitb/ -o reference-vitb/ --format reference
"""

from __future__ import annotations

import argparse

HELP = "convert backbone weights (reference .pth <-> voxelfm safetensors folder)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", "-w", required=True, metavar="W",
                        help="weights: reference teacher dump or training checkpoint (.pth), bare state dict, "
                             "voxelfm folder / model.safetensors, reference run folder with config.yaml, "
                             "or a config name (vit_tiny, vit_small, vit_base) for random init")
    parser.add_argument("--config", "-c", default=None, metavar="CONFIG",
                        help="architecture + normalisation: the reference config.yaml (student.*, "
                             "datasets[0].norm), a voxelfm config.json, or a config name; default: stored "
                             "with the weights, else inferred from the tensor shapes")
    parser.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="voxelfm: output folder; reference: a .pth file, or a folder that receives "
                             "config.yaml + checkpoints/teacher_checkpoint.pth")
    parser.add_argument("--format", "-f", choices=("voxelfm", "reference"), default="voxelfm",
                        help="voxelfm (model.safetensors + config.json + README.md; default) or reference "
                             "({'teacher': {'backbone.*'}} .pth, loadable by the reference code)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voxelfm.models import load_backbone, save_backbone, write_reference_config
    from voxelfm.models.checkpoint import CONFIG_NAME, MODEL_CARD_NAME, WEIGHTS_NAME, save_reference_teacher

    model = load_backbone(args.weights, config=args.config)
    n_params = model.num_parameters()
    c = model.config
    print(f"loaded {args.weights} ({model.source.get('format')}): embed_dim {c.embed_dim}, depth {c.depth}, "
          f"heads {c.num_heads}, patch {c.patch_size}, registers {c.num_register_tokens}; "
          f"normalisation mean {model.preset.mean:g} std {model.preset.std:g}")
    out = Path(args.output)
    if args.format == "voxelfm":
        if out.suffix.lower() in (".pth", ".pt", ".safetensors"):
            raise ValueError(f"--format voxelfm writes a folder; got a file name {out} (drop the suffix)")
        save_backbone(model, out, provenance={"exported_from": str(args.weights),
                                              "export_config": str(args.config) if args.config else None})
        written = [out / WEIGHTS_NAME, out / CONFIG_NAME, out / MODEL_CARD_NAME]
    else:
        if out.suffix.lower() == ".pth":
            save_reference_teacher(out, model)
            written = [out]
            print("note: the reference code also needs a config.yaml; export to a folder to get one")
        else:
            weights = save_reference_teacher(out / "checkpoints" / "teacher_checkpoint.pth", model)
            cfg = write_reference_config(out / "config.yaml", c, model.preset.mean, model.preset.std,
                                         hu_window=model.preset.hu_window)
            written = [cfg, weights]
    for path in written:
        print(f"wrote {path}")
    print(f"parameters: {n_params:,}")
    return 0
