"""Architecture of the 3D ViT as plain data (:class:`ViTConfig`) and the registry of named configs.

Field names are the reference ``student.*`` keys of ``config.yaml`` (REFERENCE.md §1.1), so a reference
run configuration maps onto a :class:`ViTConfig` one to one (see
:func:`voxelfm.models.read_reference_config`). One field is ours: ``drop_path_mode`` chooses between
the reference's stochastic-depth rule and plain per-sample drop path (training only; no effect on
weights or on inference).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from voxelfm.errors import ConfigError

__all__ = ["ViTConfig", "CONFIGS", "FFN_LAYERS", "DROP_PATH_MODES", "get_config", "config_names"]

FFN_LAYERS: tuple[str, ...] = ("mlp", "swiglu", "identity")
DROP_PATH_MODES: tuple[str, ...] = ("reference", "per_sample")


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`voxelfm.models.VisionTransformer3D`.

    Attributes:
        embed_dim: token width ``C``. ``C / num_heads`` (the head dim) must be divisible by 6
            (3D RoPE: three axis blocks of interleaved channel pairs).
        depth: number of transformer blocks.
        num_heads: attention heads.
        patch_size: side of the cubic patch in voxels (Conv3d kernel = stride).
        mlp_ratio: hidden width of the feed-forward layer is ``int(embed_dim * mlp_ratio)``.
        ffn_layer: ``"mlp"`` (fc1-GELU-fc2), ``"swiglu"`` (keys ``w12``, ``w3``) or ``"identity"``.
        qkv_bias, proj_bias, ffn_bias: biases of the qkv, attention-output and FFN linears.
        layerscale: LayerScale init value (``gamma``); ``None``/0 disables LayerScale (no ``ls*.gamma``
            keys), as in the reference where any falsy value removes it.
        drop_path_rate: stochastic-depth rate (training only; 0 for inference / the EMA teacher).
        drop_path_uniform: same rate in every block (``True``) or a linear ramp 0 → rate.
        drop_path_mode: ``"reference"`` — per-sample drop path when the block rate is in (0, 0.1],
            the batch-subset variant (residual computed on a random subset of ``⌊B·(1-rate)⌋``
            samples, rescaled by ``B / subset``) when it is above 0.1, exactly as the reference
            ``Block``; ``"per_sample"`` — always per-sample drop path.
        rope_base: RoPE period base; periods are ``rope_base ** (2 i / (head_dim / 3))``.
        rope_rescale_coords: training-time RoPE coordinate jitter: coords multiplied by one scalar
            ``exp(U(-log r, log r))`` per forward when the model is in training mode; ``None`` = off.
        num_register_tokens: register tokens between CLS and the patch tokens.
    """

    embed_dim: int = 864
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 14
    mlp_ratio: float = 4.0
    ffn_layer: str = "mlp"
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    layerscale: float | None = 1e-5
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = True
    drop_path_mode: str = "reference"
    rope_base: float = 100.0
    rope_rescale_coords: float | None = None
    num_register_tokens: int = 4

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "num_register_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not _is_integral(value):
                raise ConfigError(f"ViTConfig.{name} must be an integer, got {value!r}")
            set_(name, int(value))
        for name in ("qkv_bias", "proj_bias", "ffn_bias", "drop_path_uniform"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"ViTConfig.{name} must be true or false, got {value!r}")
        for name in ("mlp_ratio", "drop_path_rate", "rope_base"):
            set_(name, _as_float(name, getattr(self, name)))
        for name in ("layerscale", "rope_rescale_coords"):
            value = getattr(self, name)
            set_(name, None if value is None else _as_float(name, value))

        if self.embed_dim < 1 or self.depth < 1 or self.num_heads < 1 or self.patch_size < 1:
            raise ConfigError("ViTConfig.embed_dim, depth, num_heads and patch_size must be >= 1, got "
                              f"{self.embed_dim}, {self.depth}, {self.num_heads}, {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 6:
            raise ConfigError(
                f"head_dim = embed_dim / num_heads = {self.embed_dim}/{self.num_heads} = {self.head_dim} "
                "must be divisible by 6 (3D RoPE rotates interleaved channel pairs in three axis blocks); "
                f"choose embed_dim as a multiple of {6 * self.num_heads} or change num_heads")
        if self.num_register_tokens < 0:
            raise ConfigError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.ffn_layer not in FFN_LAYERS:
            raise ConfigError(f"ffn_layer must be one of {list(FFN_LAYERS)}, got {self.ffn_layer!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.drop_path_mode not in DROP_PATH_MODES:
            raise ConfigError(f"drop_path_mode must be one of {list(DROP_PATH_MODES)}, "
                              f"got {self.drop_path_mode!r}")
        if self.rope_base <= 0:
            raise ConfigError(f"rope_base must be > 0, got {self.rope_base}")
        if self.rope_rescale_coords is not None and self.rope_rescale_coords < 1.0:
            raise ConfigError("rope_rescale_coords must be None (off) or >= 1 (coords scaled by "
                              f"exp(U(-log r, log r))), got {self.rope_rescale_coords}")
        if self.layerscale is not None and self.layerscale == 0.0:
            set_("layerscale", None)

    # ------------------------------------------------------------------ derived quantities
    @property
    def head_dim(self) -> int:
        """Channels per attention head (``embed_dim // num_heads``)."""
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of the FFN, ``int(embed_dim * mlp_ratio)`` as in the reference ``Block``."""
        return int(self.embed_dim * self.mlp_ratio)

    def block_drop_path_rates(self) -> list[float]:
        """Stochastic-depth rate of every block (uniform, or ``linspace(0, rate, depth)``)."""
        if self.drop_path_uniform:
            return [self.drop_path_rate] * self.depth
        if self.depth == 1:
            return [0.0]
        return [self.drop_path_rate * i / (self.depth - 1) for i in range(self.depth)]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, ignore_unknown: bool = False) -> ViTConfig:
        """Build from a dict of fields (missing fields take the defaults = the VoxelFM ViT-B).

        Raises:
            ConfigError: unknown keys (unless ``ignore_unknown``) or invalid values.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a ViT config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and not ignore_unknown:
            raise ConfigError(f"unknown ViTConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **overrides: Any) -> ViTConfig:
        """Copy with some fields changed (validated; unknown names raise :class:`ConfigError`)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown ViTConfig fields {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


def _is_integral(value: Any) -> bool:
    if isinstance(value, int):
        return True
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return True
    if isinstance(value, str):
        try:
            return float(value).is_integer()
        except ValueError:
            return False
    return False


def _as_float(name: str, value: Any) -> float:
    # PyYAML (YAML 1.1) reads "1e-5" as a string, so numeric strings are accepted.
    if isinstance(value, bool):
        raise ConfigError(f"ViTConfig.{name} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"ViTConfig.{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"ViTConfig.{name} must be finite, got {value!r}")
    return out


# Named configs: all patch 14, head_dim 72, MLP ratio 4, 4 registers, LayerScale 1e-5, RoPE base 100.
CONFIGS: dict[str, ViTConfig] = {
    "vit_tiny": ViTConfig(embed_dim=216, depth=12, num_heads=3),
    "vit_small": ViTConfig(embed_dim=432, depth=12, num_heads=6),
    "vit_base": ViTConfig(embed_dim=864, depth=12, num_heads=12),  # the released VoxelFM ViT-B
}


def config_names() -> list[str]:
    """Names accepted by :func:`get_config` / :func:`voxelfm.models.build_backbone`."""
    return sorted(CONFIGS)


def get_config(name: str) -> ViTConfig:
    """Return the named config (``vit_tiny``, ``vit_small``, ``vit_base``)."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f"unknown model config {name!r}; choose one of {config_names()}") from None
