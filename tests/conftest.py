"""Test configuration.

``tests/stubs`` holds a stand-in for ``flash_attn`` (CUDA-only, cannot be installed here), put on
``sys.path`` only when the real package is absent and only for the tests. See tests/stubs/README.md.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # tests import their helpers as top-level modules (reference, helpers)
if importlib.util.find_spec("flash_attn") is None:
    sys.path.insert(0, os.path.join(_HERE, "stubs"))
