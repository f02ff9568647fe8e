"""What the node asks of the process it runs in, once, before anything else starts.

Two settings of the host decide how far the node's own bounds reach: the soft limit on
open files (every link, forwarded connection and target connection is a descriptor, and
the usual 1024 would run out long before the link table's 1024 links do), and glibc's
habit of returning every large freed buffer to the kernel (on the data path the page
faults that follow cost more than the encryption). Both are process-wide, so they live
here and not in a role.
"""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger("vx6.node")


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (every link,
    forwarded connection and target connection is a descriptor; the usual soft limit of
    1024 would end the node's links long before its link table does). Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    # Logged once the node runs (Node.run): a home refused at start says one line only.
    return soft


def tune_allocator() -> None:
    """Keep glibc from handing every large short-lived buffer (encrypted frames, socket
    reads) back to the kernel and faulting it in again on the next one: on the data path
    that page-fault churn cost more than the encryption. Bounded: at most 32 MiB of freed
    memory is kept."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: the defaults are merely slower
