"""Target masking: only the assistant's answer (and its end-of-turn token) carries loss; no generation
prompt, no per-chunk BOS in the targets; the <image> placeholder becomes one IMAGE_TOKEN_INDEX."""

from __future__ import annotations

import pytest

from voxelfm.reportgen.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    STAGE2_SYSTEM_PROMPT,
    build_messages,
    render_conversation,
    tokenize_conversation,
    tokenize_prompt,
)

REPORT = "Mild cardiomegaly. No pleural effusion."


def _targets(tc):
    return [t for t in tc.labels if t != IGNORE_INDEX]


def test_only_answer_and_end_of_turn_are_targets(tok):
    msgs = build_messages(REPORT, system_prompt=STAGE2_SYSTEM_PROMPT)
    tc = tokenize_conversation(tok, msgs)
    assert len(tc.input_ids) == len(tc.labels)
    assert tok.decode(_targets(tc)) == REPORT + "<|im_end|>"
    # the targets are one contiguous run at the end (before the trailing newline)
    idx = [i for i, t in enumerate(tc.labels) if t != IGNORE_INDEX]
    assert idx == list(range(idx[0], idx[-1] + 1))
    assert all(tc.labels[i] == tc.input_ids[i] for i in idx)
    # no generation prompt, no BOS inside the targets; exactly one BOS in the sequence, at position 0
    assert tok.bos_token_id not in _targets(tc)
    assert tc.input_ids.count(tok.bos_token_id) == 1 and tc.input_ids[0] == tok.bos_token_id
    start_ids = tok("<|im_start|>", add_special_tokens=False)["input_ids"]
    assert not set(start_ids) & set(_targets(tc))
    assert "assistant" not in tok.decode(_targets(tc))
    # one image placeholder, never a target
    assert tc.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert tc.labels[tc.input_ids.index(IMAGE_TOKEN_INDEX)] == IGNORE_INDEX


def test_generation_prompt_is_the_prefix_of_training_ids(tok):
    tc = tokenize_conversation(tok, build_messages(REPORT))
    prompt = tokenize_prompt(tok, build_messages(None))
    first_target = next(i for i, t in enumerate(tc.labels) if t != IGNORE_INDEX)
    assert tc.input_ids[:first_target] == prompt
    # the prompt ends with the generation prompt "<|im_start|>assistant\n"
    assert tok.decode([t for t in prompt if t >= 0]).endswith("<|im_start|>assistant\n")


def test_rendering_tokenised_once_equals_whole_text(tok):
    msgs = build_messages(REPORT)
    tc = tokenize_conversation(tok, msgs)
    text = render_conversation(tok, msgs)
    assert tc.text == text
    before, after = text.split("<image>")
    expect = (tok(before, add_special_tokens=False)["input_ids"] + [IMAGE_TOKEN_INDEX]
              + tok(after, add_special_tokens=False)["input_ids"])
    assert tc.input_ids == expect


class _NoOffsets:
    """A tokenizer without offset mapping (like a slow tokenizer)."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kw):
        if kw.pop("return_offsets_mapping", False):
            raise NotImplementedError("no offsets")
        return self._tok(text, **kw)


def test_tokenizer_without_offsets_gives_the_same_targets(tok):
    msgs = build_messages(REPORT, system_prompt="Be brief.")
    fast = tokenize_conversation(tok, msgs)
    slow = tokenize_conversation(_NoOffsets(tok), msgs)
    assert tok.decode(_targets(slow)) == REPORT + "<|im_end|>"
    assert _targets(slow) == _targets(fast)


def test_template_that_renders_history_differently(tok):
    """Qwen3-style: the final assistant turn gets an empty think block; the generation prompt with
    enable_thinking=False ends with the same block, so it is not a target."""
    from copy import deepcopy

    t = deepcopy(tok)
    t.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n'"
        " + m['content'] + '<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
        "'<|im_end|>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
        "{% endif %}")
    tc = tokenize_conversation(t, build_messages(REPORT), chat_template_kwargs={"enable_thinking": False})
    assert t.decode(_targets(tc)) == REPORT + "<|im_end|>"
    # without the kwarg the generation prompt stops before the think block, so the model has to
    # write it: the targets are exactly what follows the generation prompt
    tc2 = tokenize_conversation(t, build_messages(REPORT), chat_template_kwargs={})
    assert t.decode(_targets(tc2)) == "<think>\n\n</think>\n\n" + REPORT + "<|im_end|>"
    prompt = tokenize_prompt(t, build_messages(None), chat_template_kwargs={})
    assert tc2.input_ids[:len(prompt)] == prompt


def test_plain_fallback_without_chat_template(tok):
    from copy import deepcopy

    t = deepcopy(tok)
    t.chat_template = None
    tc = tokenize_conversation(t, build_messages(REPORT, system_prompt="S"))
    assert tc.text.startswith("System: S\n\nUser: <image>")
    assert t.decode(_targets(tc)) == REPORT + "<|im_end|>"
    assert tokenize_prompt(t, build_messages(None, system_prompt="S")) == tc.input_ids[:next(
        i for i, x in enumerate(tc.labels) if x != IGNORE_INDEX)]


def test_validation_and_truncation(tok):
    with pytest.raises(ValueError, match="exactly one"):
        build_messages(REPORT, prompt="no placeholder")
    with pytest.raises(ValueError, match="exactly one"):
        build_messages(REPORT, prompt="<image><image>")
    full = tokenize_conversation(tok, build_messages(REPORT))
    cut = tokenize_conversation(tok, build_messages(REPORT), max_length=len(full) - 3)
    assert cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    with pytest.raises(ValueError, match="image placeholder"):
        tokenize_conversation(tok, build_messages(REPORT), max_length=3)
