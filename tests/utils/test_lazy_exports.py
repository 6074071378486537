"""voxelfm.utils.lazy_exports: PEP 562 lazy names, shared by the package __init__ files."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from voxelfm.utils.lazy_exports import lazy_exports


def test_name_is_imported_on_first_access_and_cached():
    namespace: dict = {"__name__": "pkg"}
    getattr_, dir_ = lazy_exports("pkg", {"sqrt": "math", "dumps": "json"}, namespace)
    assert "sqrt" not in namespace
    assert getattr_("sqrt") is math.sqrt
    assert namespace["sqrt"] is math.sqrt  # later lookups are plain globals
    assert dir_() == ["__name__", "dumps", "sqrt"]


def test_unknown_name_is_an_attribute_error_naming_the_package():
    getattr_, _ = lazy_exports("pkg.sub", {"sqrt": "math"}, {})
    with pytest.raises(AttributeError, match="module 'pkg.sub' has no attribute 'nope'"):
        getattr_("nope")


def test_missing_name_in_its_module_is_an_attribute_error():
    getattr_, _ = lazy_exports("pkg", {"not_in_math": "math"}, {})
    with pytest.raises(AttributeError):
        getattr_("not_in_math")


def test_exports_are_copied_at_creation():
    exports = {"sqrt": "math"}
    getattr_, _ = lazy_exports("pkg", exports, {})
    exports["floor"] = "math"
    with pytest.raises(AttributeError):
        getattr_("floor")


@pytest.mark.parametrize("package", ["voxelfm", "voxelfm.demo", "voxelfm.probes"])
def test_packages_resolve_every_public_name_lazily(package):
    import importlib

    mod = importlib.import_module(package)
    assert set(mod._LAZY) <= set(dir(mod))
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'does_not_exist'"):
        getattr(mod, "does_not_exist")
    for name in mod.__all__:
        if name != "__version__":
            assert getattr(mod, name) is not None, name


def test_package_imports_stay_torch_free():
    code = "import sys, voxelfm, voxelfm.demo, voxelfm.probes, voxelfm.utils; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
