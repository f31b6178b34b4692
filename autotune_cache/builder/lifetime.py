"""How long a process of the build lives: no longer than its parent (the build child, the compile zygote and its
workers), even when that parent is killed by SIGKILL and can clean nothing up."""
from __future__ import annotations

import os
import signal


def die_with(parent: int | None) -> None:
    """Ask Linux to SIGKILL this process when its parent (pid `parent`) dies (PR_SET_PDEATHSIG); exit at once if
    it is gone already (it died before the prctl). The build child's, the compile zygote's and
    its workers'."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # not Linux: the parent's own cleanup is all there is
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
