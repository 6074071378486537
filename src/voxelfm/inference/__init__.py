"""Feature extraction: full and chunked forward passes, batch extraction into an embedding store."""

from voxelfm.inference.features import Features
from voxelfm.inference.store import EmbeddingStore

__all__ = ["Features", "EmbeddingStore"]
