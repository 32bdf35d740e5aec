"""`alexmodel.bench`, as before issue 18: the code is in alexmodel/tools/bench.py; this name is that same module."""

import sys

from alexmodel.tools import bench

sys.modules[__name__] = bench
