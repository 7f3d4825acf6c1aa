"""nnsight, contained: the one module that imports it, configured not to touch other Python objects.

By default nnsight mounts `.save()` on *every* object at import time (`CONFIG.APP.PYMOUNT`), which breaks libraries
that inspect class attributes (anyio's `TypedAttributeSet`, used by the web server). The setting is read once, at
nnsight's import, from the file named by `NNSIGHT_CONFIG`; so before the first import we point that variable at
`nnsight.yaml` beside this module (PYMOUNT off) unless the user set it, and save values with `nnsight.save(x)`.
The source pass and the naive reference trace through here; the engine patches with plain hooks (interventions.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_NNSIGHT_CONFIG = Path(__file__).with_name("nnsight.yaml")

if "nnsight" not in sys.modules:
    os.environ.setdefault("NNSIGHT_CONFIG", str(PROJECT_NNSIGHT_CONFIG))

import nnsight  # noqa: E402 (must follow the configuration above)
from nnsight import save  # noqa: E402
from nnsight.modeling.transformers import TransformersModel  # noqa: E402

nnsight.CONFIG.APP.PYMOUNT = False

__all__ = ["TransformersModel", "save"]
