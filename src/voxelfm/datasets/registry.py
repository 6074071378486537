"""The recipes ``voxelfm datasets`` knows: one module per dataset, listed here.

A recipe module ``voxelfm.datasets.<module>`` defines ``RECIPE``, an instance of a
:class:`~voxelfm.datasets.recipe.Recipe` subclass. Add a dataset by adding its module name to
:data:`RECIPE_MODULES`.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from voxelfm.datasets.recipe import Recipe

__all__ = ["RECIPE_MODULES", "get_recipe", "recipes"]

#: recipe modules, in the order ``voxelfm datasets list`` shows them.
RECIPE_MODULES: tuple[str, ...] = (
    "ct_rate",
    "luna16",
    "totalsegmentator",
    "ct_org",
    "nsclc_radiomics",
    "osic",
    "rsna_pe",
    "ictcf",
    "mycobacterial",
    "mediastinal_ln",
    "airrc",
    "merlin",
)


@lru_cache(maxsize=1)
def recipes() -> dict[str, Recipe]:
    """All recipes by name."""
    out: dict[str, Recipe] = {}
    for module in RECIPE_MODULES:
        recipe = importlib.import_module(f"voxelfm.datasets.{module}").RECIPE
        if recipe.name in out:
            raise RuntimeError(f"two recipes are called {recipe.name!r}")
        out[recipe.name] = recipe
    return out


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "").replace("-", "")


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case, ``_`` and ``-`` insensitive: ``CT_RATE`` = ``ctrate`` = ``ct-rate``).

    Raises:
        ValueError: no such recipe (the message lists them).
    """
    recipe = {_key(n): r for n, r in recipes().items()}.get(_key(name))
    if recipe is None:
        raise ValueError(f"no dataset recipe {name!r}; available: {', '.join(recipes())}")
    return recipe
