"""Policy files and directories, reloaded when they change on disk.

Polling, not inotify: it sees Kubernetes ConfigMap updates (an atomic swap of the
``..data`` symlink, which inotify on the file itself misses), network file
systems and editors that replace files by rename. A file's identity is the
(device, inode, size, mtime) of what its path resolves to now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from sidecar.compiled.snapshot import PolicyRegistry
from sidecar.model.loader import load_file, policy_files

log = logging.getLogger("sidecar.sources.files")

Fingerprint = tuple[int, int, int, int]


def _fingerprint(path: Path) -> Fingerprint | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped ..data target changes it
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FilePolicySource:
    def __init__(
        self, registry: PolicyRegistry, roots: Sequence[Path], interval: float = 1.0
    ) -> None:
        self._registry = registry
        self._roots = [Path(r) for r in roots]
        self._interval = interval
        self._seen: dict[Path, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None

    def load_all(self) -> int:
        """Synchronous first load (and the body of every poll). Returns files changed."""
        current: dict[Path, Fingerprint] = {}
        for path in policy_files(self._roots):
            fingerprint = _fingerprint(path)
            if fingerprint is not None:
                current[path] = fingerprint
        missing_roots = [r for r in self._roots if not r.exists()]
        changed = 0
        for path, fingerprint in current.items():
            if self._seen.get(path) != fingerprint:
                self._registry.replace_source(f"file:{path}", load_file(path), publish=False)
                log.info("loaded policy file %s", path)
                changed += 1
        for path in set(self._seen) - set(current):
            # A root that vanished entirely is more likely a remount in progress
            # than an intent to drop every policy: keep serving what we have.
            if any(path.is_relative_to(r) or path == r for r in missing_roots):
                continue
            self._registry.remove_source(f"file:{path}", publish=False)
            log.info("policy file removed: %s", path)
            changed += 1
        for root in missing_roots:
            log.error("policy path %s does not exist", root)
        self._seen = {p: f for p, f in current.items()} | {
            p: f
            for p, f in self._seen.items()
            if p not in current and any(p.is_relative_to(r) for r in missing_roots)
        }
        if changed or not self._registry.initialised:
            self._registry.publish()
        return changed

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="policy-files")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.load_all()
            except Exception:
                log.exception("reloading policy files failed; keeping the current policies")
