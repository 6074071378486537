"""Self-distillation losses with the DINOv2 class API: :class:`DINOLoss` (CLS token),
:class:`iBOTPatchLoss` (masked patch tokens), :class:`KoLeoLoss` (entropy regulariser), and
Sinkhorn–Knopp teacher targets (:func:`sinkhorn_knopp`) as an alternative to centring."""

from voxelfm.ssl.losses.dino_clstoken_loss import DINOLoss, sinkhorn_knopp
from voxelfm.ssl.losses.ibot_patch_loss import iBOTPatchLoss
from voxelfm.ssl.losses.koleo_loss import KoLeoLoss

__all__ = ["DINOLoss", "iBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]
