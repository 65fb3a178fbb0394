"""Helpers of the batch tests: the generated dataset, running the command, processes from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import samdeploy

#: Generator options small enough for a fast run, loose enough that most images give masks.
GENERATOR = {"points_per_side": 3, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.8}
GENERATOR_ARGS = ("--points-per-side", "3", "--pred-iou-thresh", "0.7", "--stability-score-thresh", "0.8")
SRC = Path(samdeploy.__file__).resolve().parent.parent
N_IMAGES = 20


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """HxWx3 uint8: a gradient with a few flat-coloured discs and bars (objects for the model)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 200 // width, yy * 200 // height, np.full_like(xx, 60)], -1).astype(np.uint8)
    for k in range(4):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = rng.integers(6, max(7, min(height, width) // 3))
        region = (
            ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
            if k % 2
            else (abs(yy - cy) < r) & (abs(xx - cx) < r // 2 + 2)
        )
        image[region] = rng.integers(0, 256, 3)
    return image


def image_size(index: int) -> tuple[int, int]:
    return 48 + 4 * index, 96 - 3 * index


def keys(dataset: Path) -> list[str]:
    return sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*.png"))


def results(out: Path) -> dict[str, bytes]:
    """Every per-image document of an output folder, by its path under ``results/``."""
    return {
        p.relative_to(out / "results").as_posix(): p.read_bytes() for p in (out / "results").rglob("*.json")
    }


def batch_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "samdeploy", "batch", *map(str, args)]


def environment() -> dict[str, str]:
    """This environment with this tree's sources first; Ray's own settings dropped, and its token
    authentication off (the test cluster listens on loopback only, and a driver joining it would
    otherwise need the token of whoever started it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``samdeploy batch ARGS`` in a fresh process (as a user runs it)."""
    return subprocess.run(
        batch_command(*args), env=environment(), capture_output=True, text=True, timeout=timeout
    )


def wait_for(condition: Callable[[], bool], timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_all(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raylet_workers(address: str, title: str = "ray::MapWorker") -> list[int]:
    """Pids of the Ray workers whose process title starts with ``title`` on the cluster at
    ``address`` (children of its raylet)."""
    port = address.rsplit(":", 1)[1]
    raylets = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and "raylet" in cmdline(int(p.name)).split(" ")[0]
        and f":{port}" in cmdline(int(p.name))
    ]
    return [pid for raylet in raylets for pid in children(raylet) if cmdline(pid).startswith(title)]


class MountNamespace:
    """A private mount namespace, held open by a sleeping process: what is mounted in it (a tiny
    tmpfs, a read-only bind) is seen only by the commands run in it (:meth:`run`, :meth:`start`),
    and its files are read from outside through ``/proc/PID/root``. Needs root (``unshare``)."""

    def __init__(self) -> None:
        own = os.readlink("/proc/self/ns/mnt")
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "3600"])

        def entered() -> bool:
            # unshare execs sleep only once its namespace is made private: before that, a mount
            # could land in (or propagate to) this namespace.
            return cmdline(self.holder.pid).startswith("sleep ")

        wait_for(lambda: entered() or self.holder.poll() is not None, timeout=10, what="the mount namespace")
        if self.holder.poll() is not None:
            raise OSError(f"unshare --mount exited with {self.holder.returncode}")
        # Every mount below is made in the namespace, never in this one.
        assert os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != own

    def command(self, *command: object) -> list[str]:
        return ["nsenter", "--target", str(self.holder.pid), "--mount", "--", *map(str, command)]

    def run(self, *command: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``command`` in the namespace (as a user runs it: this tree's sources first)."""
        return subprocess.run(
            self.command(*command), env=environment(), capture_output=True, text=True, timeout=timeout
        )

    def start(self, *command: object) -> subprocess.Popen[str]:
        """``command`` started in the namespace, its output captured."""
        return subprocess.Popen(
            self.command(*command),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def mount(self, *arguments: object) -> None:
        done = self.run("mount", *arguments)
        assert done.returncode == 0, f"mount {arguments}: {done.stderr}"

    def path(self, path: Path) -> Path:
        """``path`` as the namespace sees it, readable from outside."""
        return Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()
