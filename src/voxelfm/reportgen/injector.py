"""Splice projected CT tokens into a batch of token sequences (the reference ``ImageTokenInjector``).

Every sequence holds exactly one :data:`~voxelfm.reportgen.conversation.IMAGE_TOKEN_INDEX`
placeholder among its real (attention-mask 1) tokens; it is replaced by that sample's ``Q``
projected embeddings, whose labels are :data:`~voxelfm.reportgen.conversation.IGNORE_INDEX`.
The result is padded again — on the right for training, on the left for batched generation (a
decoder continues from the last position, so real tokens must end there) — with zero embeddings,
attention mask 0 and ignored labels. Done for the whole batch with index arithmetic, no Python
loop over samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from voxelfm.reportgen.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX

__all__ = ["InjectedBatch", "inject_image_tokens"]


@dataclass
class InjectedBatch:
    """Language-model inputs after injection.

    Attributes:
        inputs_embeds: ``[B, L', H]``.
        attention_mask: ``[B, L']`` long, 1 on real positions (text and image tokens).
        labels: ``[B, L']`` long or ``None``.
        position_ids: ``[B, L']`` long, 0, 1, ... over the real positions (0 on padding), correct
            for both padding sides.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor


def inject_image_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor,
                        embed_tokens: nn.Module, labels: torch.Tensor | None = None, *,
                        padding_side: Literal["right", "left"] = "right") -> InjectedBatch:
    """Replace each sample's ``<image>`` placeholder by its projected tokens.

    Args:
        input_ids: ``[B, L]`` long, with one :data:`IMAGE_TOKEN_INDEX` per sample among the real
            tokens; padding (mask 0) may sit on either side and hold any id.
        attention_mask: ``[B, L]`` 0/1.
        image_embeds: ``[B, Q, H]`` projected CT tokens.
        embed_tokens: the language model's input embedding (``model.get_input_embeddings()``).
        labels: ``[B, L]`` long or ``None``; the placeholder's label is ignored.
        padding_side: where the output is padded.

    Returns:
        :class:`InjectedBatch` with ``L' = max_b(real_b) - 1 + Q``.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [B, L], got {tuple(input_ids.shape)} "
                         f"and {tuple(attention_mask.shape)}")
    B = input_ids.shape[0]
    if image_embeds.ndim != 3 or image_embeds.shape[0] != B:
        raise ValueError(f"image_embeds must be [B={B}, Q, H], got {tuple(image_embeds.shape)}")
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(f"labels must be [B, L] like input_ids, got {tuple(labels.shape)}")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    Q, H = image_embeds.shape[1], image_embeds.shape[2]
    device = image_embeds.device

    real = attention_mask.to(device).bool()
    ids = input_ids.to(device)
    is_img = (ids == IMAGE_TOKEN_INDEX) & real
    n_img = is_img.sum(1)
    if bool((n_img != 1).any()):
        bad = int(torch.nonzero(n_img != 1)[0, 0])
        raise ValueError(f"every sequence needs exactly one image placeholder; sample {bad} has "
                         f"{int(n_img[bad])}")
    text = real & ~is_img

    rank = real.long().cumsum(1) - 1                       # B, L: position among real tokens
    img_rank = (rank * is_img.long()).sum(1)               # B
    new_len = real.long().sum(1) - 1 + Q                   # B
    L_out = int(new_len.max())
    offset = (L_out - new_len) if padding_side == "left" else torch.zeros_like(new_len)

    dest = rank + torch.where(rank > img_rank[:, None], Q - 1, 0) + offset[:, None]   # B, L
    safe_ids = torch.where(text, ids, torch.zeros_like(ids))
    tok_embeds = embed_tokens(safe_ids)                    # B, L, H
    if tok_embeds.shape[-1] != H:
        raise ValueError(f"image tokens have width {H} but the language model's embeddings have "
                         f"{tok_embeds.shape[-1]}; the projector's out_dim must equal the LM hidden size")

    b_idx, t_idx = torch.nonzero(text, as_tuple=True)
    out = tok_embeds.new_zeros(B, L_out, H)
    out = out.index_put((b_idx, dest[b_idx, t_idx]), tok_embeds[b_idx, t_idx])
    img_pos = img_rank[:, None] + torch.arange(Q, device=device)[None, :] + offset[:, None]   # B, Q
    rows = torch.arange(B, device=device)[:, None].expand(B, Q)
    out = out.index_put((rows, img_pos), image_embeds.to(out.dtype))

    positions = torch.arange(L_out, device=device)[None, :]
    mask = (positions >= offset[:, None]) & (positions < (offset + new_len)[:, None])
    position_ids = torch.where(mask, positions - offset[:, None], torch.zeros_like(positions))

    out_labels = None
    if labels is not None:
        out_labels = torch.full((B, L_out), IGNORE_INDEX, dtype=torch.long, device=device)
        out_labels[b_idx, dest[b_idx, t_idx]] = labels.to(device)[b_idx, t_idx].long()
    return InjectedBatch(out, mask.long(), out_labels, position_ids)
