"""Recipes from public CT datasets' official download layouts to prepared folders: a manifest for
``voxelfm extract``, a label table and patient splits in the probe format, and a suite YAML
reproducing the paper's protocol (``voxelfm datasets list`` / ``prepare``; docs/datasets.md).

Example::

    from voxelfm.datasets import prepare_dataset
    result = prepare_dataset("ct-rate", "downloads/CT-RATE", "prepared/ct-rate")
    print(result.summary())
"""

from voxelfm.datasets.prepare import OUTPUT_FILES, PreparedFolderExistsError, PrepareResult, prepare_dataset
from voxelfm.datasets.recipe import Prepared, PrepareReport, Recipe, RecipeOption
from voxelfm.datasets.registry import get_recipe, recipes

__all__ = [
    "OUTPUT_FILES",
    "Prepared",
    "PreparedFolderExistsError",
    "PrepareReport",
    "PrepareResult",
    "Recipe",
    "RecipeOption",
    "get_recipe",
    "prepare_dataset",
    "recipes",
]
