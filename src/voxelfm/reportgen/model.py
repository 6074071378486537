"""The report model: Perceiver resampler + causal LM (+ LoRA), with save / load of a model folder.

A model folder holds::

    report_model.json        ReportModelConfig (LM path or id, projector shape, feature, prompts, LoRA)
    projector.safetensors    projector weights
    lora/                    LoRA adapters (peft ``save_pretrained``), stage 2 only

The base LM is referenced by path or id, never copied (it can be many GB); ``ReportModel.load(dir,
lm=...)`` can point at another copy of the same LM.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from voxelfm.errors import CheckpointError
from voxelfm.reportgen.conversation import DEFAULT_PROMPT, build_messages, tokenize_prompt
from voxelfm.reportgen.injector import inject_image_tokens
from voxelfm.reportgen.projector import PerceiverResampler, ProjectorConfig
from voxelfm.utils import atomic_write, atomic_write_text

__all__ = ["LoraSettings", "ReportModelConfig", "ReportModel", "GENERATION_STRATEGIES", "generation_kwargs"]

CONFIG_NAME = "report_model.json"
PROJECTOR_NAME = "projector.safetensors"
LORA_DIR = "lora"

#: Decoding settings of the reference (``mllm/inference/inference.py``).
GENERATION_STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "nucleus": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "num_beams": 1},
    "beam": {"do_sample": False, "num_beams": 4},
}


def generation_kwargs(strategy: str) -> dict[str, Any]:
    """``generate`` keyword arguments of a decoding strategy: greedy, nucleus (T 0.7, top-p 0.9,
    top-k 50) or beam (4 beams)."""
    if strategy not in GENERATION_STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(GENERATION_STRATEGIES)}, got {strategy!r}")
    return dict(GENERATION_STRATEGIES[strategy])


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (reference stage 2: r 16, alpha 32, dropout 0.05)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"])


@dataclass
class ReportModelConfig:
    """Everything needed to rebuild a :class:`ReportModel` around its saved weights.

    Attributes:
        lm: base LM folder or Hugging Face id (``"default"`` = offline SmolLM2-135M-Instruct).
        projector: the projector's shape (``in_dim`` = embedding width, ``out_dim`` = LM hidden size).
        feature: which embedding feeds the projector: ``"cls"`` (one token), ``"patch"`` (all patch
            tokens) or ``"cls+patch"``.
        max_patch_tokens: average-pool the patch grid to at most this many tokens (``None`` = all).
        prompt: user prompt with one ``<image>`` placeholder.
        system_prompt: system prompt ("" = none).
        chat_template_kwargs: extra chat-template variables (``enable_thinking: False`` for Qwen3).
        lora: LoRA settings, or ``None`` (stage 1: projector only).
        stage: 1 or 2 (informational).
        stop_token_ids: extra ids that end generation (the end-of-turn token of the template).
        report_style: what the model was trained to write (``original`` or ``abnormal`` findings only).
        grounding: :class:`~voxelfm.reportgen.grounding.GroundingConfig` as a dict, or ``None``
            (the pure LLaVA prompt); a grounded model folder also holds ``grounding.json`` and
            ``grounding.safetensors``.
    """

    lm: str
    projector: ProjectorConfig
    feature: Literal["cls", "patch", "cls+patch"] = "cls"
    max_patch_tokens: int | None = None
    prompt: str = DEFAULT_PROMPT
    system_prompt: str = ""
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    lora: LoraSettings | None = None
    stage: int = 1
    stop_token_ids: list[int] = field(default_factory=list)
    report_style: str = "original"
    grounding: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.feature not in ("cls", "patch", "cls+patch"):
            raise ValueError(f"feature must be cls, patch or cls+patch, got {self.feature!r}")
        if self.max_patch_tokens is not None and int(self.max_patch_tokens) < 1:
            raise ValueError("max_patch_tokens must be positive or None")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["projector"] = self.projector.to_dict()
        d["format"] = "voxelfm.reportgen/1"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportModelConfig:
        d = dict(d)
        d.pop("format", None)
        d["projector"] = ProjectorConfig.from_dict(d["projector"])
        if d.get("lora") is not None:
            d["lora"] = LoraSettings(**d["lora"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class ReportModel(nn.Module):
    """Projector + causal LM: ``features → <image> tokens → report``.

    Build with :meth:`create` (new projector) or :meth:`load` (a saved folder). The LM's own
    weights are frozen; the projector and (if any) the LoRA adapters are trainable.

    Args:
        lm: a Hugging Face causal LM (or a peft model wrapping one).
        tokenizer: its tokenizer (must have a pad token).
        projector: a :class:`PerceiverResampler` whose ``out_dim`` is the LM hidden size.
        config: the :class:`ReportModelConfig`.
        grounding: a fitted :class:`~voxelfm.reportgen.grounding.Grounding` (grounded prompts), or ``None``.
    """

    def __init__(self, lm: Any, tokenizer: Any, projector: PerceiverResampler, config: ReportModelConfig,
                 grounding: Any = None) -> None:
        super().__init__()
        self.grounding = grounding
        if grounding is not None:
            config.grounding = grounding.config.to_dict()
        self.lm = lm
        self.tokenizer = tokenizer
        self.projector = projector
        self.config = config
        hidden = lm.get_input_embeddings().weight.shape[1]
        if projector.config.out_dim != hidden:
            raise ValueError(f"projector out_dim {projector.config.out_dim} != LM hidden size {hidden}")
        for name, p in self.lm.named_parameters():
            p.requires_grad_("lora_" in name)
        self.projector.requires_grad_(True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, config: ReportModelConfig, *, device: Any = "cpu", dtype: Any = None,
               allow_download: bool = False, lm_and_tokenizer: tuple[Any, Any] | None = None) -> ReportModel:
        """A new model: load the LM (or use ``lm_and_tokenizer``), add LoRA if configured, and a
        freshly initialised projector. ``config.projector.out_dim`` is set to the LM hidden size."""
        from voxelfm.reportgen.lm import apply_lora, load_language_model

        if lm_and_tokenizer is None:
            lm, tok = load_language_model(config.lm, device=device, dtype=dtype, allow_download=allow_download)
        else:
            lm, tok = lm_and_tokenizer
        hidden = lm.get_input_embeddings().weight.shape[1]
        config.projector = ProjectorConfig.from_dict({**config.projector.to_dict(), "out_dim": hidden})
        if config.lora is not None:
            lm = apply_lora(lm, r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                            target_modules=config.lora.target_modules)
        param = next(lm.parameters())
        projector = PerceiverResampler(config.projector).to(device=param.device)
        return cls(lm, tok, projector, config)

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], *, device: Any = "cpu", dtype: Any = None,
             lm: str | None = None, merge_lora: bool = False, trainable: bool = False,
             allow_download: bool = False, lm_and_tokenizer: tuple[Any, Any] | None = None) -> ReportModel:
        """Load a saved model folder.

        Args:
            model_dir: folder written by :meth:`save`.
            lm: use this LM path/id instead of the one recorded (same architecture).
            merge_lora: merge the adapters into the LM weights (faster generation, not trainable).
            trainable: keep LoRA adapters trainable (to continue training).
            lm_and_tokenizer: an already loaded base LM and tokenizer to use.
        """
        from safetensors.torch import load_file

        from voxelfm.reportgen.lm import load_language_model

        model_dir = Path(model_dir)
        cfg_path = model_dir / CONFIG_NAME
        if not cfg_path.is_file():
            raise CheckpointError(f"{model_dir} is not a report model folder (no {CONFIG_NAME}); "
                                  "pass the output folder of `voxelfm report train`")
        config = ReportModelConfig.from_dict(json.loads(cfg_path.read_text()))
        if lm is not None:
            config.lm = lm
        if lm_and_tokenizer is None:
            base, tok = load_language_model(config.lm, device=device, dtype=dtype, allow_download=allow_download)
        else:
            base, tok = lm_and_tokenizer
        if config.lora is not None:
            from peft import PeftModel

            lora_dir = model_dir / LORA_DIR
            if not lora_dir.is_dir():
                raise CheckpointError(f"{model_dir} is a LoRA model but has no {LORA_DIR}/ folder")
            base = PeftModel.from_pretrained(base, str(lora_dir), is_trainable=trainable and not merge_lora)
            if merge_lora:
                base = base.merge_and_unload()
        param = next(base.parameters())
        projector = PerceiverResampler(config.projector).to(device=param.device)
        state = load_file(str(model_dir / PROJECTOR_NAME))
        try:
            projector.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{model_dir / PROJECTOR_NAME} does not match the projector config: "
                                  f"{str(exc).splitlines()[0]}") from exc
        grounding = None
        if config.grounding and config.grounding.get("mode", "none") != "none":
            from voxelfm.reportgen.grounding import Grounding

            grounding = Grounding.load(model_dir)
        model = cls(base, tok, projector, config, grounding)
        if merge_lora:
            config.lora = None
        return model

    # ------------------------------------------------------------------ saving
    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write config, projector and LoRA adapters into ``model_dir`` (each file atomically)."""
        from safetensors.torch import save_file

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.projector.state_dict().items()}
        with atomic_write(model_dir / PROJECTOR_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        if self.config.lora is not None:
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{LORA_DIR}.", suffix=".tmp", dir=model_dir))
            try:
                self.lm.save_pretrained(str(tmp_dir), safe_serialization=True)
                final = model_dir / LORA_DIR
                old = None
                if final.exists():
                    old = model_dir / f".{LORA_DIR}.old"
                    shutil.rmtree(old, ignore_errors=True)
                    os.rename(final, old)
                os.rename(tmp_dir, final)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
        if self.grounding is not None:
            self.grounding.save(model_dir)
        atomic_write_text(model_dir / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2))
        return model_dir

    # ------------------------------------------------------------------ state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Projector and LoRA tensors (what training changes), detached copies on CPU."""
        return {n: p.detach().to("cpu").clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict` (strict on the trainable names)."""
        params = dict(self.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        unknown = [n for n in state if n not in params]
        if missing or unknown:
            raise CheckpointError(f"trainable state mismatch: missing {missing[:3]}, unexpected {unknown[:3]}")
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    # ------------------------------------------------------------------ compute
    def _inject(self, features: torch.Tensor, feature_mask: torch.Tensor | None, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, labels: torch.Tensor | None, padding_side: str):
        dev = self.device
        pad = None if feature_mask is None else feature_mask.to(dev)
        image = self.projector(features.to(dev), key_padding_mask=pad)
        embed = self.lm.get_input_embeddings()
        image = image.to(embed.weight.dtype)
        return inject_image_tokens(input_ids.to(dev), attention_mask.to(dev), image, embed,
                                   None if labels is None else labels.to(dev), padding_side=padding_side)

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, feature_mask: torch.Tensor | None = None) -> Any:
        """Language-model forward on injected inputs.

        Args:
            features: ``[B, N, C]`` CT tokens; ``feature_mask`` ``[B, N]`` bool, True = padding.
            input_ids, attention_mask, labels: ``[B, L]`` right-padded conversations.

        Returns:
            the LM output (``.loss`` = mean cross-entropy over target tokens when ``labels`` given).
        """
        inj = self._inject(features, feature_mask, input_ids, attention_mask, labels, "right")
        return self.lm(inputs_embeds=inj.inputs_embeds, attention_mask=inj.attention_mask,
                       position_ids=inj.position_ids, labels=inj.labels)

    def prompt_ids(self, prompt: str | None = None) -> list[int]:
        """Token ids of the generation prompt (system + user with ``<image>`` + generation prompt);
        ``prompt`` replaces the configured user prompt (a grounded prompt)."""
        msgs = build_messages(None, prompt=prompt or self.config.prompt, system_prompt=self.config.system_prompt)
        return tokenize_prompt(self.tokenizer, msgs, chat_template_kwargs=self.config.chat_template_kwargs)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, feature_mask: torch.Tensor | None = None, *,
                 strategy: str = "greedy", max_new_tokens: int = 256, prompts: Sequence[str] | None = None,
                 **kwargs: Any) -> list[str]:
        """Write one report per sample.

        Args:
            features: ``[B, N, C]``; ``feature_mask`` ``[B, N]`` bool (True = padding).
            prompts: one user prompt per sample (grounded prompts,
                :meth:`~voxelfm.reportgen.grounding.Grounding.prompts`); default: the configured prompt.
            strategy: ``greedy``, ``nucleus`` or ``beam`` (:data:`GENERATION_STRATEGIES`).
            max_new_tokens: length limit of a report.
            **kwargs: override any ``generate`` argument (e.g. ``repetition_penalty``).

        Returns:
            the decoded reports (special tokens removed, whitespace stripped).
        """
        B = features.shape[0]
        if prompts is None:
            ids = torch.tensor([self.prompt_ids()] * B, dtype=torch.long)
            mask = torch.ones_like(ids)
        else:
            if len(prompts) != B:
                raise ValueError(f"{len(prompts)} prompts for {B} samples")
            rows = [self.prompt_ids(p) for p in prompts]
            width = max(len(r) for r in rows)
            ids = torch.zeros(B, width, dtype=torch.long)
            mask = torch.zeros(B, width, dtype=torch.long)
            for i, r in enumerate(rows):  # right-padded here; the injector re-pads on the left
                ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, :len(r)] = 1
        inj = self._inject(features, feature_mask, ids, mask, None, "left")
        tok = self.tokenizer
        eos = [t for t in [tok.eos_token_id, *self.config.stop_token_ids] if t is not None]
        gen = {**generation_kwargs(strategy), "max_new_tokens": int(max_new_tokens),
               "pad_token_id": tok.pad_token_id, "eos_token_id": sorted(set(eos)) or None, **kwargs}
        was_training = self.training
        self.eval()
        try:
            out = self.lm.generate(inputs_embeds=inj.inputs_embeds, attention_mask=inj.attention_mask, **gen)
        finally:
            self.train(was_training)
        texts = tok.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]
