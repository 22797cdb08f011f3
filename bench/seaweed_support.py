"""Load tests/support/seaweed.py (the shared `weed mini` launcher) as a standalone module.

Imported by file path, not as `tests.support.seaweed`: the package's `__init__` also imports
modelfs itself, and the benchmark must run (and measure rclone and s3fs) even while modelfs
does not import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_SEAWEED_PY = Path(__file__).resolve().parent.parent / "tests" / "support" / "seaweed.py"
_MODULE_NAME = "modelfs_bench_seaweed"


def seaweed() -> ModuleType:
    """The module (SeaweedServer, find_weed, ...), loaded once."""
    loaded = sys.modules.get(_MODULE_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, _SEAWEED_PY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_SEAWEED_PY}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def find_weed() -> str:
    path: str = seaweed().find_weed()
    return path
