"""Tiny offline building blocks for the reportgen tests: a BPE tokenizer trained on the spot, a
randomly initialised Llama, and an embedding store of synthetic features."""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = ("{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

REPORTS = [
    "No acute findings. Lungs are clear.",
    "Mild cardiomegaly. No pleural effusion.",
    "Right pleural effusion. Heart size normal.",
    "A 6 mm nodule in the right upper lobe.",
    "Emphysema in both upper lobes. Coronary artery calcification.",
    "Consolidation in the left lower lobe with atelectasis.",
]


def tiny_tokenizer(*, add_bos: bool = True):
    """A byte-level BPE tokenizer (vocab ~400) with ChatML specials and a chat template.

    ``add_bos=True`` makes it a BOS-adding tokenizer (``<s>`` prepended by its post-processor when
    ``add_special_tokens=True``) with ``{{ bos_token }}`` in its template, like Llama's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = REPORTS * 5 + ["system user assistant You are a radiology assistant. Generate a radiology "
                            "report for this CT scan. <image>"] * 5
    tk.train_from_iterator(corpus, trainer)
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                          special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>",
                                  pad_token="<pad>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML if add_bos else CHATML.replace("{{ bos_token }}", "")
    return tok


def tiny_llama(vocab_size: int, *, hidden: int = 64, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def tiny_lm_dir(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny tokenizer + random Llama into ``path`` (a normal HF model folder)."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def synthetic_store(root: Path, n: int = 12, *, dim: int = 24, grid=(2, 2, 3), seed: int = 0):
    """An EmbeddingStore with ``n`` random Features (ids ``case000``...) and a report table."""
    import pandas as pd

    from voxelfm.inference.features import Features
    from voxelfm.inference.store import EmbeddingStore

    g = torch.Generator().manual_seed(seed)
    store = EmbeddingStore(root / "store")
    rows = []
    for i in range(n):
        cid = f"case{i:03d}"
        feats = Features(cls=torch.randn(dim, generator=g), patch=torch.randn(*grid, dim, generator=g),
                         registers=torch.randn(2, dim, generator=g))
        store.write(cid, feats)
        split = "train" if i < n * 2 // 3 else ("val" if i < n * 5 // 6 else "test")
        rows.append({"id": cid, "split": split, "report": REPORTS[i % len(REPORTS)]})
    store.write_index()
    table = pd.DataFrame(rows)
    from voxelfm.reportgen.labeler import label_reports

    labels = label_reports(table["report"])
    table = pd.concat([table, labels[[c for c in labels.columns if labels[c].any()]]], axis=1)
    table.to_csv(root / "reports.csv", index=False)
    return store, table
