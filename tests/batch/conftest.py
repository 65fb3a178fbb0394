"""Fixtures of the batch tests: a small generated dataset, one reference local run, and Ray.

Ray costs start-up time, so the tests share two Ray set-ups for the whole session: a local Ray in
this process (``ray_local``) and a one-node "cluster" started with ``ray start --head`` on free
loopback ports (``ray_cluster``), stopped after the session (also on failure) by killing the
processes it started, by pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from batch_helpers import (
    GENERATOR,
    N_IMAGES,
    MountNamespace,
    cmdline,
    descendants,
    environment,
    free_port,
    image_size,
    kill_all,
    make_image,
)
from PIL import Image


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A folder of 20 PNGs (6 of them in ``sub/``) and a text file the folder scan must skip."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "sub").mkdir()
    for i in range(N_IMAGES):
        folder = root / "sub" if i % 3 == 2 else root
        Image.fromarray(make_image(*image_size(i), seed=i)).save(folder / f"img{i:02d}.png")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def local_out(dataset, tmp_path_factory) -> Path:
    """The reference: the dataset run locally with two worker processes. Made once per test run,
    shared by xdist workers (its files name images by key only, so any worker's dataset fits)."""
    from filelock import FileLock

    from samdeploy.batch import RunnerOptions, run_batch

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "batch-local-out"
    with FileLock(str(shared / "batch-local-out.lock")):
        if not (out / "complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            summary = run_batch(dataset, out, generator=GENERATOR, runner=RunnerOptions(workers=2, threads=1))
            assert (summary.done, summary.failed) == (N_IMAGES, 0)
            (out / "complete").touch()
    return out


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray in this process, shared by the tests that run the batch API on Ray."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """``ray start --head`` on free loopback ports: yields its address (HOST:PORT)."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="rsd", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = free_port()
    ray = [str(Path(sys.executable).parent / "ray")]
    command = ray + [
        "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--dashboard-agent-listen-port", str(free_port()),
        "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
    ]  # fmt: skip
    started = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"127.0.0.1:{port}"
    finally:
        ours = [
            int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and temp in cmdline(int(p.name))
        ]
        kill_all(sorted({pid for root in ours for pid in [root, *descendants(root)]}))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def mounts() -> Iterator[MountNamespace]:
    """A private mount namespace for one test (skipped where this user may not make one)."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux) to mount a tiny or read-only output folder")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here (needs root): {probe.stderr.strip()}")
    namespace = MountNamespace()
    try:
        yield namespace
    finally:
        namespace.close()
