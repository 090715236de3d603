"""No engine process outlives its worker, even a worker killed by SIGKILL.

vLLM may run its engine core (and, with tensor parallelism, one process per GPU) as children of
the worker. A SIGKILLed parent cannot stop them, and they hold gigabytes. So before they start,
the worker becomes the leader of its own process group and forks a small watcher: when the worker
is gone (the watcher is re-parented) it kills the whole group.
"""

from __future__ import annotations

import os
import signal
import time


def own_process_group() -> None:
    """Lead a process group of our own (so killing it reaches our children and nothing else)."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)


def watch_children(interval_s: float = 0.5) -> int:
    """Own the group and fork the watcher; returns its pid. Call before any engine child starts."""
    own_process_group()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the watcher: nothing but a sleep loop, then one kill
        # NOTE: a re-parented watcher means the worker died; a pipe would not tell, since children
        # forked without exec keep its write end open.
        try:
            while os.getppid() == parent:
                time.sleep(interval_s)
            os.killpg(os.getpgid(0), signal.SIGKILL)  # takes the watcher too
        finally:
            os._exit(0)
    return pid
