"""A warning when checkpoint storage is open to other users.

State files are Python pickles, and restore loads them: whoever can write into a flow's
checkpoint directory can make the next restore run code as the job's user. The directory
must therefore be writable by the job's owner only (see storage.py).
"""

from __future__ import annotations

import logging
import os
import stat

from onceflow.checkpoint.storage import CheckpointStorage

log = logging.getLogger("onceflow.checkpoint")


def open_to_others(storage: CheckpointStorage) -> list[str]:
    """Why ``storage`` is not private to this user (empty when it is): the flow's directory
    writable by group or others or owned by someone else, or the storage root writable by
    others without the sticky bit (``/tmp`` itself is fine: others cannot touch what is
    ours in it)."""
    problems: list[str] = []
    try:
        flow_dir = os.stat(storage.dir)
        root = os.stat(storage.root)
    except OSError:
        return problems
    if flow_dir.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(f"{storage.dir} is writable by other users "
                        f"(mode {stat.S_IMODE(flow_dir.st_mode):o})")
    if hasattr(os, "getuid") and flow_dir.st_uid != os.getuid():
        problems.append(f"{storage.dir} belongs to another user (uid {flow_dir.st_uid})")
    if root.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not root.st_mode & stat.S_ISVTX:
        problems.append(f"{storage.root} is writable by other users "
                        f"(mode {stat.S_IMODE(root.st_mode):o})")
    return problems


def warn_if_open(storage: CheckpointStorage) -> None:
    problems = open_to_others(storage)
    if problems:
        log.warning("checkpoint storage is not private: %s. State files are Python pickles "
                    "that a restore loads, so anyone who can write there can run code as "
                    "this job; use a directory only this user can write to (chmod go-w)",
                    "; ".join(problems), extra={"event": "storage_permissions"})
