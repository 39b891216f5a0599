"""Makes the optional packages unimportable in this interpreter and its subprocesses (put this folder on
PYTHONPATH): the main environment then acts like a core-only install for ``tests/core_only``.

tests/test_extras.py runs the core-only tests this way on every test run; CI also runs them in a real core-only
virtual environment (``.venv-core``, built by ``.ci/bootstrap.py test``), which is the proof that counts. A
finder first on ``sys.meta_path`` refuses the names exactly as a missing package would (``ModuleNotFoundError``
with ``name`` set), before any other finder can see them.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

BLOCKED = frozenset(os.environ.get("SAE_HUB_BLOCK_MODULES", "").split(",")) - {""}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


if BLOCKED:
    for loaded in [m for m in sys.modules if m.partition(".")[0] in BLOCKED]:  # nothing yet, normally
        del sys.modules[loaded]
    sys.meta_path.insert(0, _Blocker())
