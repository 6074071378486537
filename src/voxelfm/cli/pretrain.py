"""``voxelfm pretrain``: DINO + iBOT + KoLeo pre-training on a prepared-volume store."""

from __future__ import annotations

import argparse

HELP = "pre-train a 3D ViT (DINO+iBOT+KoLeo) on a prepared-volume store; resumes; torchrun for DDP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny",
                        help="vit_base (reference defaults), tiny (CPU-sized), or a YAML file "
                             "(a reference run's config.yaml works) [default: tiny]")
    parser.add_argument("--data", required=True, help="prepared-volume store folder (voxelfm prepare)")
    parser.add_argument("--output", "-o", required=True,
                        help="run folder; re-running the same command resumes from its newest checkpoint")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimizer steps in total (checkpoint written)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much wall time in this call (checkpoint written)")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --output")
    parser.add_argument("--device", default=None, help="cpu or cuda [default: cuda when available]")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loader workers [train.num_workers]")
    parser.add_argument("--knn-labels", default=None,
                        help="CSV (id + 0/1 columns, optional split) for a periodic kNN AUROC check")
    parser.add_argument("--knn-target", default=None, help="target column(s) of --knn-labels, comma-separated")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.epochs=10 train.batch_size_per_gpu=4")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from voxelfm.ssl.distributed import destroy_distributed
    from voxelfm.ssl.trainer import pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        logging.getLogger("voxelfm").setLevel(logging.WARNING)
    try:
        path = pretrain(args.config, args.data, args.output, max_steps=args.max_steps,
                        max_minutes=args.max_minutes, overrides=args.overrides, resume=not args.no_resume,
                        knn_labels=args.knn_labels, knn_target=args.knn_target, device=args.device,
                        num_workers=args.num_workers)
    finally:
        destroy_distributed()  # torchrun: leave the process group cleanly
    if rank == 0:
        print(f"teacher backbone: {path}")
    return 0
