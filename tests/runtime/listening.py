"""What a test's own processes listen on: TCP listening sockets (`ss -ltnpH`) of this process and its descendants.

A sampler thread records them while a job runs, so sockets that live only during the job (Ray's workers and
actors) are seen too. Other processes on the machine are not ours and are left out by process id.
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import threading


def descendants(root: int | None = None) -> set[int]:
    """Process ids of `root` (default: this process) and everything it started, transitively."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = {root or os.getpid()}
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= new
        grew = bool(new)
    return found


def listening(pids: set[int]) -> set[tuple[str, str]]:
    """(local address, process name) of every TCP socket in LISTEN held by one of `pids`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            names = re.findall(r'"([^"]+)"', line)
            found.add((line.split()[3], names[0] if names else "?"))
    return found


def is_loopback(address: str) -> bool:
    """'127.0.0.1:80', '[::1]:80', '[::ffff:127.0.0.1]:80' → True; '*:80', '0.0.0.0:80', '192.0.2.2:80' → False."""
    host = address.rsplit(":", 1)[0].strip("[]").split("%")[0]
    if host in ("*", ""):
        return False
    ip = ipaddress.ip_address(host)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


class Sampler:
    """`with Sampler() as s: ...` → s.seen: every (address, process) this process tree listened on meanwhile."""

    def __init__(self, every: float = 0.5):
        self.every, self.seen = every, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            self.seen |= listening(descendants())
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seen |= listening(descendants())

    def beyond_loopback(self) -> set[tuple[str, str]]:
        return {s for s in self.seen if not is_loopback(s[0])}
