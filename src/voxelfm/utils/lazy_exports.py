"""Lazy package exports: public names imported from their module on first access (PEP 562).

A package ``__init__`` lists its public names and the module each lives in; nothing heavy (torch,
transformers) is imported until a name is used, so ``import voxelfm`` stays fast and
``voxelfm.stats`` stays torch-free. Example::

    from voxelfm.utils.lazy_exports import lazy_exports

    _LAZY = {"train_probe": "voxelfm.probes.run", "run_suite": "voxelfm.probes.suite"}
    __all__ = sorted(_LAZY)
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for a package with lazily imported names.

    Args:
        package: the package's ``__name__`` (used in the ``AttributeError`` message).
        exports: public name → the module that defines it (``{"run_suite": "voxelfm.probes.suite"}``).
        namespace: the package's ``globals()``; a name, once imported, is cached there so later
            accesses are ordinary attribute lookups.

    Returns:
        ``(__getattr__, __dir__)`` to assign at module level of the package ``__init__``.
    """
    exports = dict(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
