"""``voxelfm report``: train a report generator on cached embeddings, generate reports, score them.

    voxelfm report train    --store STORE --reports TABLE -o DIR [--lm PATH] [--stage 1|2|both]
                            [--grounding none|probe|retrieval|both]
    voxelfm report generate --store STORE --model DIR -o OUT [--reports TABLE --split test] [--redecode N] [--repair]
    voxelfm report evaluate --generated OUT --truth TABLE -o DIR [--probe --store STORE]
    voxelfm report label    --reports TABLE -o LABELS.csv      (rule-based or LLM abnormality labels)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "report generation from embeddings: train, generate, evaluate (abnormality F1), label"


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_run_options(p: argparse.ArgumentParser, *, no_resume_help: str) -> None:
    """--device, --seed, --no-resume and --threads of the train and generate actions."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--no-resume", action="store_true", help=no_resume_help)
    _add_threads(p)


def _add_labeler_options(p: argparse.ArgumentParser) -> None:
    """--labeler, --uncertain, --llm-url and --llm-model of the evaluate and label actions."""
    p.add_argument("--labeler", default="rule", choices=["rule", "llm"], help="rule-based (default) or LLM labeler")
    p.add_argument("--uncertain", default="positive", choices=["positive", "negative"],
                   help="how 'possible X' counts with the rule-based labeler")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible API root, e.g. http://localhost:11434/v1")
    p.add_argument("--llm-model", default=None, help="served model name for --labeler llm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train projector (stage 1) and projector + LoRA (stage 2)",
                       description="Train a report generator on cached embeddings. With --stage both (default) "
                                   "stage 1 is written to DIR/stage1 and stage 2 to DIR/stage2. Rerunning with the "
                                   "same DIR resumes from its checkpoints.")
    t.add_argument("--store", required=True, help="embedding store folder (voxelfm extract output)")
    t.add_argument("--reports", required=True, help="table with id, report and split (train/val/test) columns")
    t.add_argument("-o", "--output", required=True, help="output folder")
    t.add_argument("--lm", default=None,
                   help="causal LM folder or cached Hugging Face id (default: offline SmolLM2-135M-Instruct)")
    t.add_argument("--stage", default="both", choices=["1", "2", "both"], help="which stage(s) (default both)")
    t.add_argument("--init", default=None, help="stage-1 model folder to initialise stage 2 (--stage 2)")
    t.add_argument("--profile", default="cpu", choices=["cpu", "paper"],
                   help="cpu: 32 queries x 256 wide, lr 1e-3/2e-4; paper: the reference's 128 x 2048, lr 1e-4/2e-5")
    t.add_argument("--feature", default="cls", choices=["cls", "patch", "cls+patch"], help="embedding tokens (default cls)")
    t.add_argument("--max-patch-tokens", type=int, default=512, help="pool the patch grid to at most this many tokens")
    t.add_argument("--report-style", default="abnormal", choices=["abnormal", "original"],
                   help="train on abnormal findings only (default, like the reference's restructured reports) "
                        "or on the reports as written")
    t.add_argument("--grounding", default="none", choices=["none", "probe", "retrieval", "both"],
                   help="what the prompt holds besides the image tokens: none (pure LLaVA, the paper's method), "
                        "probe (per-finding probe decisions with probabilities), retrieval (most similar training "
                        "reports) or both")
    t.add_argument("--top-k", type=int, default=1, help="similar training reports per prompt (--grounding retrieval/both)")
    t.add_argument("--grounding-threshold", default="0.5",
                   help="probe probability at which a finding is stated (default 0.5), or 'f1' (per finding, "
                        "tuned on out-of-fold training probabilities)")
    t.add_argument("--grounding-feature", default="cls", choices=["cls", "mean_patch", "cls+mean_patch"],
                   help="embedding vector of the probes and the retrieval (default cls)")
    t.add_argument("--train-findings", default="truth", choices=["truth", "probe"],
                   help="findings listed in training prompts: the true ones (default: the LM learns to state what "
                        "it is given) or the out-of-fold probe decisions")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--grad-accum", type=int, default=None)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (both stages unless --stage 1/2)")
    t.add_argument("--max-minutes", type=float, default=None, help="training time budget (split 40/60 for --stage both)")
    t.add_argument("--lr-clock", default=None, choices=["steps", "time"],
                   help="what warm-up + cosine decay follow: the step count of --epochs, or the share of "
                        "--max-minutes used (default: time with --max-minutes, else steps)")
    t.add_argument("--queries", type=int, default=None, help="projector queries = image tokens")
    t.add_argument("--width", type=int, default=None, help="projector width")
    t.add_argument("--lora-r", type=int, default=None)
    t.add_argument("--lora-alpha", type=float, default=None)
    t.add_argument("--lora-dropout", type=float, default=None)
    t.add_argument("--max-length", type=int, default=None, help="token limit of a conversation (default 1024)")
    _add_run_options(t, no_resume_help="start over even if DIR holds a checkpoint")
    t.add_argument("--allow-download", action="store_true", help="let transformers download a missing --lm")

    g = sub.add_parser("generate", help="write a report for each volume",
                       description="Generate reports with a trained model (DIR from `voxelfm report train`). OUT "
                                   "gets reports/<id>.txt, generated.csv and generation.json; a rerun keeps "
                                   "reports already written.")
    g.add_argument("--store", required=True, help="embedding store folder")
    g.add_argument("--model", required=True, help="model folder (or the training folder: stage2/ is used)")
    g.add_argument("-o", "--output", required=True, help="output folder")
    g.add_argument("--reports", default=None, help="optional table: restrict to --split and add ground truth")
    g.add_argument("--split", default="test", help="split of --reports to generate for ('all' = every row)")
    g.add_argument("--strategy", default="greedy", choices=["greedy", "nucleus", "beam"],
                   help="greedy; nucleus (T 0.7, top-p 0.9, top-k 50); beam (4)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=8)
    _add_run_options(g, no_resume_help="regenerate reports already in OUT")
    g.add_argument("--redecode", type=int, default=0,
                   help="grounded models: up to N extra sampled decodings of a report that contradicts the probe "
                        "findings (the one with the fewest disagreements is kept; default 0 = only check)")
    g.add_argument("--repair", action="store_true",
                   help="grounded models: make each report state exactly the probe findings (sentences stating "
                        "other findings or denying these are dropped, missed ones added on a last line); "
                        "generated.csv keeps the decoding as generated_raw")

    e = sub.add_parser("evaluate", help="abnormality F1 of generated reports (+ probe comparison)",
                       description="Label generated reports for the 18 CT-RATE abnormalities and compare with the "
                                   "truth (finding columns, or the labels of its report column). Writes "
                                   "per_label.csv, results.md, results.json and comparison.png.")
    e.add_argument("--generated", required=True, help="generation folder or CSV with id and generated columns")
    e.add_argument("--truth", required=True, help="table with id and 0/1 finding columns or a report column")
    e.add_argument("-o", "--output", required=True, help="output folder")
    e.add_argument("--truth-source", default="auto", choices=["auto", "columns", "report"])
    e.add_argument("--split", default=None, help="evaluate only ids of this split of --truth")
    _add_labeler_options(e)
    e.add_argument("--baseline", action="store_true",
                   help="also score the most-common-training-report and random-training-report baselines (and, "
                        "with --store, the nearest-training-report retrieval baseline)")
    e.add_argument("--permutations", type=int, default=0,
                   help="permutation test with N shuffles: do the reports match their own scan? (default 0 = off)")
    e.add_argument("--probe", action="store_true", help="train a binary probe per label on --store and compare")
    e.add_argument("--store", default=None, help="embedding store for --probe")
    e.add_argument("--probe-head", default="linear")
    e.add_argument("--probe-feature", default="cls")
    e.add_argument("--n-resamples", type=int, default=1000)
    e.add_argument("--seed", type=int, default=4)
    _add_threads(e)

    lab = sub.add_parser("label", help="label report texts for the 18 CT-RATE abnormalities",
                         description="Write a 0/1 table (id + 18 snake_case columns) of the abnormalities each report "
                                     "states.")
    lab.add_argument("--reports", required=True, help="table with id and a text column")
    lab.add_argument("--column", default="report", help="text column (default report)")
    lab.add_argument("-o", "--output", required=True, help="CSV to write")
    _add_labeler_options(lab)


def _labeler(args: argparse.Namespace):
    if args.labeler == "llm":
        if not args.llm_url or not args.llm_model:
            raise ValueError("--labeler llm needs --llm-url and --llm-model")
        from voxelfm.reportgen.llm_labeler import LLMLabeler

        return LLMLabeler(args.llm_url, args.llm_model, api_key=os.environ.get("OPENAI_API_KEY"))
    from voxelfm.reportgen.labeler import RuleLabeler

    return RuleLabeler(uncertain=args.uncertain)


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from voxelfm.reportgen.train import TrainConfig, train_report_model, train_two_stages

    def config(stage: int) -> TrainConfig:
        make = TrainConfig.paper if args.profile == "paper" else TrainConfig.cpu
        cfg = make(stage)
        over = {"epochs": args.epochs, "batch_size": args.batch_size, "grad_accum": args.grad_accum, "lr": args.lr,
                "num_queries": args.queries, "width": args.width, "lora_r": args.lora_r,
                "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout, "max_length": args.max_length}
        over = {k: v for k, v in over.items() if v is not None}
        threshold = args.grounding_threshold if args.grounding_threshold == "f1" else float(args.grounding_threshold)
        return replace(cfg, feature=args.feature, max_patch_tokens=args.max_patch_tokens, device=args.device,
                       grounding=args.grounding, grounding_top_k=args.top_k, grounding_threshold=threshold,
                       grounding_feature=args.grounding_feature, grounding_train_findings=args.train_findings,
                       report_style=args.report_style,
                       lr_clock=args.lr_clock or ("time" if args.max_minutes else "steps"),
                       seed=args.seed, max_minutes=args.max_minutes if args.stage != "both" else None, **over)

    resume = not args.no_resume
    if args.stage == "both":
        if args.init:
            raise ValueError("--init is for --stage 2 (stage both trains its own stage 1)")
        r1, r2 = train_two_stages(args.store, args.reports, args.output, lm=args.lm, stage1=config(1),
                                  stage2=config(2), max_minutes=args.max_minutes, resume=resume,
                                  allow_download=args.allow_download)
        results = {"stage1": r1.to_dict(), "stage2": r2.to_dict()}
        model_dir = r2.model_dir
    else:
        stage = int(args.stage)
        if stage == 1 and args.init:
            raise ValueError("--init only applies to stage 2")
        r = train_report_model(args.store, args.reports, args.output, lm=args.lm, config=config(stage),
                               init_from=args.init, resume=resume, allow_download=args.allow_download)
        results = {f"stage{stage}": r.to_dict()}
        model_dir = r.model_dir
    print(json.dumps(results, indent=2, default=str))
    print(f"model: {model_dir}", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from voxelfm.reportgen.generate import generate_reports

    split = None if args.split in ("all", "", None) else args.split
    df = generate_reports(args.model, args.store, table=args.reports, split=split if args.reports else None,
                          strategy=args.strategy, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          out_dir=args.output, resume=not args.no_resume, seed=args.seed, device=args.device,
                          redecode=args.redecode, repair=args.repair)
    print(f"{len(df)} reports -> {Path(args.output) / 'generated.csv'}")
    if "n_disagreements" in df.columns:
        bad = int((df["n_disagreements"] > 0).sum())
        print(f"{bad} of {len(df)} reports disagree with the probe findings -> "
              f"{Path(args.output) / 'consistency.csv'}"
              + (f"; repaired -> {Path(args.output) / 'repaired'}" if args.repair else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from voxelfm.reportgen.evaluate import (
        baseline_reports,
        compare_with_probes,
        evaluate_reports,
        permutation_test,
        write_evaluation,
    )

    labeler = _labeler(args)
    ev = evaluate_reports(args.generated, args.truth, labeler=labeler, truth_source=args.truth_source,
                          split=args.split, n_resamples=args.n_resamples, seed=args.seed)
    baselines = None
    if args.baseline:
        ids = list(ev.truth.index)
        kinds = ("most_common", "random_train") + (("nearest_train",) if args.store else ())
        baselines = {kind: evaluate_reports(baseline_reports(ids, args.truth, kind=kind, seed=args.seed, labeler=labeler,
                                                             store=args.store, feature=args.probe_feature),
                                            args.truth, labeler=labeler, truth_source=args.truth_source,
                                            n_resamples=args.n_resamples, seed=args.seed)
                     for kind in kinds}
    comparison = None
    if args.probe:
        if not args.store:
            raise ValueError("--probe needs --store (the embeddings the probes are trained on)")
        comparison = compare_with_probes(args.store, args.truth, ev, feature=args.probe_feature, head=args.probe_head,
                                         n_resamples=args.n_resamples, seed=args.seed)
    extra = None
    if args.permutations:
        extra = {"permutation_test": permutation_test(ev, n_permutations=args.permutations, seed=args.seed)}
    paths = write_evaluation(ev, args.output, comparison=comparison, baselines=baselines, extra=extra)
    print(ev.summary())
    if extra:
        pt = extra["permutation_test"]
        print(f"permutation test: macro F1 {pt['observed_macro_f1']:.3f} vs shuffled {pt['null_mean']:.3f} "
              f"(95th percentile {pt['null_95th_percentile']:.3f}), p = {pt['p_value']:.4f}")
    if baselines:
        for k, b in baselines.items():
            print(f"baseline {k.replace('_', ' ')}: macro F1 {b.macro_f1}")
    if comparison is not None:
        print(f"probe: macro F1 {comparison.macro_f1}")
    print(f"-> {paths['markdown']}", file=sys.stderr)
    return 0


def _label(args: argparse.Namespace) -> int:
    from voxelfm.reportgen.dataset import read_table
    from voxelfm.reportgen.labeler import label_reports
    from voxelfm.utils import atomic_write_text

    df = read_table(args.reports)
    if args.column not in df.columns:
        raise ValueError(f"{args.reports} has no {args.column!r} column")
    labels = label_reports(df.set_index("id")[args.column], labeler=_labeler(args))
    labels.index.name = "id"
    atomic_write_text(args.output, labels.reset_index().to_csv(index=False))
    print(f"{len(labels)} reports labelled -> {args.output}")
    return 0


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if getattr(args, "allow_download", False):
        os.environ["HF_HUB_OFFLINE"] = "0"
        os.environ["TRANSFORMERS_OFFLINE"] = "0"
    _threads(args)
    action = {"train": _train, "generate": _generate, "evaluate": _evaluate, "label": _label}[args.report_command]
    return action(args)
