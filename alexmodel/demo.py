"""`alexmodel.demo`, as before issue 18: the code is in alexmodel/tools/demo.py; this name is that same module."""

import sys

from alexmodel.tools import demo

sys.modules[__name__] = demo
