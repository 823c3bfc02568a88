"""The write lock of a feature store: one writing job at a time.

``writer.lock`` (JSON: job, host, pid, process start time, since) is created exclusively by
the first writer of a job; the other ranks of the same job (same torchrun master address,
port and run id, or the same process) join it. A writer of another job refuses at once,
naming the holder. A lock whose holder ran on this host and is gone (killed, crashed) is
stale: it is taken over with a warning, so a rerun after ``kill -9`` resumes as before. A
lock held from another host cannot be checked from here; the message says how to clear it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from revision_plugin.errors import RevisionError
from revision_plugin.store import layout

logger = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"


class StoreLockedError(RevisionError):
    """Another job is writing this store."""


def job_token() -> str:
    """Identifies this writing job: shared by the ranks of one torchrun job, else per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("MASTER_PORT"):
        return "torch:{}:{}:{}".format(
            os.environ.get("MASTER_ADDR", ""), os.environ["MASTER_PORT"], os.environ.get("TORCHELASTIC_RUN_ID", "")
        )
    return f"process:{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot) where /proc has it: guards pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_time(pid) in ("", start)


def acquire(store_dir: Path) -> bool:
    """Take (or join) the write lock of ``store_dir``; True if this call created it."""
    path = Path(store_dir) / LOCK_NAME
    me = {"job": job_token(), "host": socket.gethostname(), "pid": os.getpid(),
          "start": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # being written this instant, or removed: look again
                time.sleep(0.05)
                holder = _read(path)
                if holder is None:
                    continue
            if holder.get("job") == me["job"]:
                return False
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                    and not _alive(holder["pid"], str(holder.get("start", ""))):
                logger.warning("%s: taking over a stale write lock of pid %s on %s (since %s); that writer is gone",
                               store_dir, holder["pid"], holder["host"], holder.get("since"))
                layout.atomic_write_json(path, me, fsync=False)
                return True
            raise StoreLockedError(
                f"{store_dir}: being written by another job (pid {holder.get('pid')} on host {holder.get('host')}, "
                f"since {holder.get('since')}); wait for it to finish, write to another --out, or delete "
                f"{path} if that process is gone"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return True
    raise StoreLockedError(f"{path}: could not take the write lock (it keeps changing); retry")


def release(store_dir: Path) -> None:
    """Drop the lock if this job holds it (never another job's)."""
    path = Path(store_dir) / LOCK_NAME
    holder = _read(path)
    if holder is not None and holder.get("job") == job_token():
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        if not path.read_bytes().strip():
            return None  # created, not yet written
        return {"job": None, "host": "?", "pid": "?", "since": f"unknown ({path} is unreadable)"}
    except OSError:
        return {"job": None, "host": "?", "pid": "?", "since": f"unknown ({path} is unreadable)"}
    return content if isinstance(content, dict) and content else None
