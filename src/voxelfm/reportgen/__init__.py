"""Report generation from frozen CT features, scored by the CT-RATE abnormalities it mentions.

The seventh task of the VoxelFM paper (LLaVA-style): a Perceiver resampler projects cached CT
embeddings into a causal language model's embedding space, the projected tokens replace an
``<image>`` placeholder in a chat prompt, and the projector (stage 1), then projector + LoRA
(stage 2), are trained to write the report. Generated reports are labelled for the 18 CT-RATE
abnormalities and compared with the truth and with a probe classifier on the same embeddings.

Pieces (one per module):

- :mod:`~voxelfm.reportgen.labeler`: rule-based abnormality labeler (:func:`label_report`)
- :mod:`~voxelfm.reportgen.llm_labeler`: optional OpenAI-compatible LLM labeler (:class:`LLMLabeler`)
- :mod:`~voxelfm.reportgen.projector`: :class:`PerceiverResampler`
- :mod:`~voxelfm.reportgen.injector`: :func:`inject_image_tokens` (``<image>`` → projected tokens)
- :mod:`~voxelfm.reportgen.conversation`: chat template rendering and assistant-only targets
- :mod:`~voxelfm.reportgen.lm`: any Hugging Face causal LM by path; offline SmolLM2 GGUF default; LoRA
- :mod:`~voxelfm.reportgen.model`: :class:`ReportModel` (projector + LM), save / load
- :mod:`~voxelfm.reportgen.dataset`: :class:`ReportDataset` over an embedding store and a report table
- :mod:`~voxelfm.reportgen.train`: :func:`train_report_model` (two stages, resumable checkpoints)
- :mod:`~voxelfm.reportgen.generate`: :func:`generate_reports` (greedy / nucleus / beam)
- :mod:`~voxelfm.reportgen.grounding`: grounded prompts (probe findings, similar training reports)
- :mod:`~voxelfm.reportgen.consistency`: generated report vs the probe's findings, per scan
- :mod:`~voxelfm.reportgen.evaluate`: per-label P/R/F1, macro F1 with bootstrap CIs, probe comparison,
  baselines (most common, random, nearest training report), permutation test
- :mod:`~voxelfm.reportgen.experiment`: :func:`run_report_experiment` (train → generate → evaluate)

Names are imported lazily so ``import voxelfm.reportgen`` does not import torch or transformers.
"""

from __future__ import annotations

from voxelfm.utils.lazy_exports import lazy_exports

_LAZY: dict[str, str] = {
    "ABNORMALITIES": "voxelfm.reportgen.labeler",
    "FINDING_COLUMNS": "voxelfm.reportgen.labeler",
    "RuleLabeler": "voxelfm.reportgen.labeler",
    "label_report": "voxelfm.reportgen.labeler",
    "label_reports": "voxelfm.reportgen.labeler",
    "LLMLabeler": "voxelfm.reportgen.llm_labeler",
    "PerceiverResampler": "voxelfm.reportgen.projector",
    "inject_image_tokens": "voxelfm.reportgen.injector",
    "IMAGE_TOKEN_INDEX": "voxelfm.reportgen.conversation",
    "IGNORE_INDEX": "voxelfm.reportgen.conversation",
    "tokenize_conversation": "voxelfm.reportgen.conversation",
    "load_language_model": "voxelfm.reportgen.lm",
    "default_lm_dir": "voxelfm.reportgen.lm",
    "apply_lora": "voxelfm.reportgen.lm",
    "ReportModel": "voxelfm.reportgen.model",
    "ReportModelConfig": "voxelfm.reportgen.model",
    "ReportDataset": "voxelfm.reportgen.dataset",
    "TrainConfig": "voxelfm.reportgen.train",
    "train_report_model": "voxelfm.reportgen.train",
    "generate_reports": "voxelfm.reportgen.generate",
    "evaluate_reports": "voxelfm.reportgen.evaluate",
    "compare_with_probes": "voxelfm.reportgen.evaluate",
    "run_report_experiment": "voxelfm.reportgen.experiment",
    "Grounding": "voxelfm.reportgen.grounding",
    "GroundingConfig": "voxelfm.reportgen.grounding",
    "report_disagreements": "voxelfm.reportgen.consistency",
    "evaluate_findings": "voxelfm.reportgen.evaluate",
    "permutation_test": "voxelfm.reportgen.evaluate",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
