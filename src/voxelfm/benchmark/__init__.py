"""Benchmarks over real datasets: ``voxelfm benchmark paper`` runs every prepared dataset ×
backbone through extraction and the dataset's probe suite and writes the paper's Table 1.

Typical use::

    from voxelfm.benchmark import run_paper_benchmark
    res = run_paper_benchmark("roots.yaml", "voxelfm=weights/,random=vit_base", "bench/")
    print(res.table)

See ``docs/datasets.md`` (section ``voxelfm benchmark paper``).
"""

from __future__ import annotations

from voxelfm.utils.lazy_exports import lazy_exports

_LAZY: dict[str, str] = {
    "run_paper_benchmark": "voxelfm.benchmark.paper",
    "plan_paper_benchmark": "voxelfm.benchmark.paper",
    "BenchmarkResult": "voxelfm.benchmark.paper",
    "PAPER_EXTRACTION": "voxelfm.benchmark.paper",
    "BackboneSpec": "voxelfm.benchmark.backbones",
    "parse_backbones": "voxelfm.benchmark.backbones",
    "load_backbone_spec": "voxelfm.benchmark.backbones",
    "read_roots": "voxelfm.benchmark.roots",
    "DatasetEntry": "voxelfm.benchmark.roots",
    "hardware_info": "voxelfm.benchmark.hardware",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
