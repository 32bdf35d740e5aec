"""`alexmodel.check`, as before issue 18: the code is in alexmodel/tools/check.py; this name is that same module."""

import sys

from alexmodel.tools import check

sys.modules[__name__] = check
