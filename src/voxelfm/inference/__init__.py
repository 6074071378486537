"""Feature extraction: full and chunked forward passes, batch extraction into an embedding store.

* :func:`extract_features` — one volume → :class:`Features` (``preset``, ``mode`` full/chunked/auto).
* :func:`extract_batch` — many volumes → an :class:`EmbeddingStore` (resumable, background
  workers, ``torchrun`` sharding); the ``voxelfm extract`` command wraps it.
* :func:`inference_scope` — around a loop of your own calls: CPU linear weights packed once and
  freed activations reused across them.
"""

from voxelfm.inference.batch import BatchSummary, extract_batch
from voxelfm.inference.chunked import WindowPlan, estimate_forward_bytes, plan_windows
from voxelfm.inference.extract import extract_features, extract_preprocessed, inference_scope
from voxelfm.inference.features import Features
from voxelfm.inference.store import EmbeddingStore

__all__ = [
    "Features", "EmbeddingStore", "extract_features", "extract_preprocessed", "extract_batch",
    "BatchSummary", "WindowPlan", "plan_windows", "estimate_forward_bytes", "inference_scope",
]
