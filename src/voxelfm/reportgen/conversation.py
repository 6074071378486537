"""Chat prompts for report generation and their token-level training targets.

A training example is a conversation ``[system?, user, assistant]`` whose user turn contains one
``<image>`` placeholder (where the projected CT tokens go) and whose assistant turn is the report.
It is rendered **once** with the tokenizer's own chat template and tokenised **once** (without
adding special tokens: the template already holds them); the placeholder becomes the id
:data:`IMAGE_TOKEN_INDEX`, and only the tokens of the assistant's answer, up to and including its
end-of-turn token, carry a label — everything else is :data:`IGNORE_INDEX`.

Where the answer starts and ends is found on the rendered text: the answer starts where the
render of the preceding messages *with the generation prompt* ends (so the generation prompt
``<|im_start|>assistant\\n`` is never a target) and ends where the render including the answer
ends (trailing whitespace dropped, so the end-of-turn token is the last target). Character spans
map to tokens through the tokenizer's offset mapping. This fixes the reference's two target bugs:
it left the generation prompt inside the last target chunk, and tokenised every chunk with
``add_special_tokens=True``, inserting a BOS inside the targets of BOS-adding tokenizers.

Tokenizers without a chat template fall back to a plain ``System: / User: / Assistant:`` layout
ending the answer with the EOS token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGE_TOKEN_INDEX",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "DEFAULT_PROMPT",
    "STAGE2_SYSTEM_PROMPT",
    "TokenizedConversation",
    "build_messages",
    "render_conversation",
    "tokenize_conversation",
    "tokenize_prompt",
]

#: Input id marking where the projected image tokens go (the reference's value).
IMAGE_TOKEN_INDEX = -200
#: Label of positions that carry no loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
#: The placeholder text in a user message.
IMAGE_PLACEHOLDER = "<image>"
#: User prompt of the report-generation conversation (reference ``preprocessing/reports.py``).
DEFAULT_PROMPT = "<image>\nGenerate a radiology report for this CT scan."
#: System prompt of the reference's stage 2 (``02_finetune``); stage 1 uses none.
STAGE2_SYSTEM_PROMPT = ("You are a radiology assistant specialized in interpreting chest CT scans and "
                        "generating concise, accurate radiology reports.")

Message = Mapping[str, str]


def build_messages(report: str | None = None, *, prompt: str = DEFAULT_PROMPT,
                   system_prompt: str = "") -> list[dict[str, str]]:
    """The conversation ``[system (if any), user prompt, assistant report (if given)]``.

    Args:
        report: the answer; ``None`` for a generation prompt.
        prompt: the user message; must contain exactly one ``<image>`` placeholder.
        system_prompt: optional system message (empty → none; the template may add its default).
    """
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"the prompt must contain exactly one {IMAGE_PLACEHOLDER} placeholder: {prompt!r}")
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    if report is not None:
        messages.append({"role": "assistant", "content": str(report).strip()})
    return messages


def _render_plain(messages: Sequence[Message], add_generation_prompt: bool, eos: str) -> str:
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    out = []
    for m in messages:
        text = f"{names.get(m['role'], m['role'].title())}: {m['content']}"
        if m["role"] == "assistant":
            text += eos
        out.append(text + "\n\n")
    if add_generation_prompt:
        out.append("Assistant: ")
    return "".join(out)


def render_conversation(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False,
                        chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
    """Render ``messages`` to text with the tokenizer's chat template (or the plain fallback).

    ``chat_template_kwargs`` are passed to the template (e.g. ``{"enable_thinking": False}`` for
    Qwen3; unknown variables are ignored by templates).
    """
    if not messages:
        return ""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(map(dict, messages)), tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             **dict(chat_template_kwargs or {}))
    return _render_plain(messages, add_generation_prompt, tokenizer.eos_token or "")


@dataclass
class TokenizedConversation:
    """One tokenised conversation.

    Attributes:
        input_ids: token ids with :data:`IMAGE_TOKEN_INDEX` at the placeholder.
        labels: same length; the token id on assistant-answer tokens, :data:`IGNORE_INDEX` elsewhere.
        text: the rendered conversation.
        target_spans: character spans ``(start, end)`` of the answers in ``text``.
    """

    input_ids: list[int]
    labels: list[int]
    text: str
    target_spans: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _assistant_spans(tokenizer: Any, messages: Sequence[Message], full: str,
                     kwargs: Mapping[str, Any] | None) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        content = m["content"]
        before = render_conversation(tokenizer, messages[:i], chat_template_kwargs=kwargs)
        with_prompt = render_conversation(tokenizer, messages[:i], add_generation_prompt=True,
                                          chat_template_kwargs=kwargs)
        upto = render_conversation(tokenizer, messages[:i + 1], chat_template_kwargs=kwargs)
        search_from = max(cursor, _common_prefix(before, full))
        pos = full.find(content, search_from) if content else search_from
        if pos < 0:
            raise ValueError("cannot locate the assistant answer in the rendered chat template; "
                             "the template rewrites message content")
        if full.startswith(with_prompt) and len(with_prompt) <= pos:
            start = len(with_prompt)
        else:
            start = pos
        if full.startswith(upto) and len(upto) >= pos + len(content):
            end = len(upto)
        else:  # the template renders history differently: answer + its end-of-turn marker
            end = pos + len(content)
            eos = getattr(tokenizer, "eos_token", None) or ""
            rest = full[end:]
            if eos and rest.lstrip(" ").startswith(eos):
                end += (len(rest) - len(rest.lstrip(" "))) + len(eos)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
        cursor = end
    return spans


def _encode_segment(tokenizer: Any, text: str, offset: int) -> tuple[list[int], list[tuple[int, int]] | None]:
    if not text:
        return [], []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = [(offset + a, offset + b) for a, b in enc["offset_mapping"]]
        return list(enc["input_ids"]), offs
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizer: no offsets
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _tokenize_with_offsets(tokenizer: Any, text: str, cuts: Sequence[int]
                           ) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenise ``text`` with ``<image>`` as a hard boundary; offsets per token.

    Without offset support the text is also cut at ``cuts`` (the answer boundaries) and each
    piece is tokenised on its own (still without special tokens), which gives exact boundaries.
    """
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pieces = text.split(IMAGE_PLACEHOLDER)
    pos = 0
    for k, piece in enumerate(pieces):
        if k > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            offsets.append((pos, pos + len(IMAGE_PLACEHOLDER)))
            pos += len(IMAGE_PLACEHOLDER)
        seg_ids, seg_offs = _encode_segment(tokenizer, piece, pos)
        if seg_offs is None:
            # slow tokenizer: cut the piece at answer boundaries too
            bounds = sorted({c - pos for c in cuts if pos < c < pos + len(piece)} | {0, len(piece)})
            seg_ids, seg_offs = [], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                sub = tokenizer(piece[a:b], add_special_tokens=False)["input_ids"]
                seg_ids.extend(sub)
                seg_offs.extend([(pos + a, pos + a)] * len(sub))  # start offset only is used
        ids.extend(seg_ids)
        offsets.extend(seg_offs)
        pos += len(piece)
    return ids, offsets


def tokenize_conversation(tokenizer: Any, messages: Sequence[Message], *,
                          chat_template_kwargs: Mapping[str, Any] | None = None,
                          max_length: int | None = None) -> TokenizedConversation:
    """Tokenise a whole conversation once and mark the assistant answers as targets.

    Args:
        tokenizer: a Hugging Face tokenizer (fast tokenizers give offsets; slow ones work too).
        messages: ``[{"role", "content"}, ...]`` with one ``<image>`` in a user turn.
        chat_template_kwargs: extra template variables (e.g. ``{"enable_thinking": False}``).
        max_length: truncate to this many tokens (the end of the answer is cut first); the image
            placeholder must survive.

    Returns:
        :class:`TokenizedConversation` with ``input_ids`` and ``labels`` of equal length.
    """
    full = render_conversation(tokenizer, messages, chat_template_kwargs=chat_template_kwargs)
    if full.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"the rendered conversation must contain exactly one {IMAGE_PLACEHOLDER} "
                         f"placeholder, found {full.count(IMAGE_PLACEHOLDER)}")
    spans = _assistant_spans(tokenizer, messages, full, chat_template_kwargs)
    cuts = [c for sp in spans for c in sp]
    ids, offsets = _tokenize_with_offsets(tokenizer, full, cuts)
    labels = [IGNORE_INDEX] * len(ids)
    for i, (tok, (a, _b)) in enumerate(zip(ids, offsets)):
        if tok == IMAGE_TOKEN_INDEX:
            continue
        if any(s <= a < e for s, e in spans):
            labels[i] = tok
    if max_length is not None and len(ids) > max_length:
        if IMAGE_TOKEN_INDEX not in ids[:max_length]:
            raise ValueError(f"max_length={max_length} cuts off the image placeholder; raise it")
        ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedConversation(ids, labels, full, spans)


def tokenize_prompt(tokenizer: Any, messages: Sequence[Message], *,
                    chat_template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """Token ids of a generation prompt (messages without the answer, plus the generation prompt)."""
    text = render_conversation(tokenizer, messages, add_generation_prompt=True,
                               chat_template_kwargs=chat_template_kwargs)
    if text.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"the prompt must contain exactly one {IMAGE_PLACEHOLDER} placeholder")
    ids, _ = _tokenize_with_offsets(tokenizer, text, [])
    return ids
