"""The part of the grounded-generation comparison that needs no language model, on a demo's embeddings.

Question: on the embeddings `voxelfm demo --with-reports` trains its report generator on, what
macro F1 (and permutation-test p) do the findings that grounding puts into the prompt reach — at the
reference's 0.5 threshold and at per-finding F1 thresholds tuned on out-of-fold training
probabilities — next to the linear probe of the paper's comparison and the report baselines (most
common, random, nearest training report)? A grounded generator that states exactly the findings it
is given (what tests/reportgen/test_grounding.py checks on a planted case) scores the
"verbalised" rows: each finding written as one sentence, labelled by the same rule labeler.

    voxelfm demo -o demo/                                         # or any finished demo folder
    .venv/bin/python benchmarks/reportgen_grounding_probes.py --demo demo/

Prints JSON and writes ``benchmarks/results/reportgen_grounding_probes.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _extraction_common import write_json  # benchmarks/ is on sys.path when run as a script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished `voxelfm demo` folder (phantoms/, embeddings/pretrained/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--permutations", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "reportgen_grounding_probes.json"))
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from voxelfm.inference import EmbeddingStore
    from voxelfm.reportgen.evaluate import (
        baseline_reports,
        compare_with_probes,
        evaluate_findings,
        evaluate_reports,
        permutation_test,
    )
    from voxelfm.reportgen.grounding import Grounding, GroundingConfig
    from voxelfm.reportgen.labeler import abnormality_name

    demo = Path(args.demo)
    load0, c0, t0 = os.getloadavg(), time.process_time(), time.perf_counter()
    table = pd.read_csv(demo / "phantoms" / "cohort.csv", dtype={"id": str})
    store = EmbeddingStore(demo / "embeddings" / "pretrained")
    test = list(table["id"][table["split"] == "test"])
    rows: dict[str, dict] = {}

    def add(name: str, ev, **extra) -> None:
        pt = permutation_test(ev, n_permutations=args.permutations, seed=4)
        rows[name] = {"macro_f1": ev.macro_f1.to_dict(), "permutation_p": pt["p_value"],
                      "precision_mean": round(float(ev.per_label.loc[ev.labels, "precision"].mean()), 3),
                      "recall_mean": round(float(ev.per_label.loc[ev.labels, "recall"].mean()), 3), **extra}

    for thr in (0.5, "f1"):
        g = Grounding.fit(store, table, GroundingConfig(mode="probe", threshold=thr))
        dec = g.decisions(g.probabilities(store.matrix(test, feature=g.config.feature)))
        frame = pd.DataFrame(dec, columns=g.labels)
        frame.insert(0, "id", test)
        add(f"grounding probes, threshold {thr}", evaluate_findings(frame, table),
            findings_per_scan=round(float(dec.sum(1).mean()), 2))
        texts = [" ".join(f"{abnormality_name(c)}." for c, v in zip(g.labels, row) if v) or "No abnormal findings."
                 for row in dec]
        add(f"verbalised grounding findings, threshold {thr}",
            evaluate_reports(pd.DataFrame({"id": test, "generated": texts}), table))
    evs = {}
    for kind in ("most_common", "random_train", "nearest_train"):
        evs[kind] = evaluate_reports(baseline_reports(test, table, kind=kind, seed=4, store=store), table)
        add(f"baseline: {kind.replace('_', ' ')} report", evs[kind])
    cmp_ = compare_with_probes(store, table, evs["nearest_train"], feature="cls", head="linear")
    add("linear probe (the paper's comparison), threshold 0.5",
        evaluate_findings(cmp_.predictions.rename_axis("id").reset_index(), table),
        findings_per_scan=round(float(cmp_.predictions.to_numpy().sum(1).mean()), 2))
    result = {"benchmark": "reportgen_grounding_probes", "demo": str(demo), "n_test": len(test), "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1),
              "load_average_1_5_15": {"before": [round(x, 2) for x in load0],
                                      "after": [round(x, 2) for x in os.getloadavg()]}}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
