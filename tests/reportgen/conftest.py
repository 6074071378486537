"""Fixtures of the reportgen tests: tiny tokenizer / LM folder / embedding store, all offline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import synthetic_store, tiny_lm_dir, tiny_tokenizer


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    return tiny_lm_dir(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture()
def store_and_table(tmp_path):
    return synthetic_store(tmp_path, n=12)
