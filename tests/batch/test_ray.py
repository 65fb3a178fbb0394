"""Ray: a local Ray in this process, and a one-node cluster joined with --ray-address, give the same
outputs as the local process pool; a killed actor's images are redone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest
from batch_helpers import (
    GENERATOR,
    GENERATOR_ARGS,
    N_IMAGES,
    alive,
    batch_command,
    environment,
    raylet_workers,
    results,
    run_cli,
    wait_for,
)

from samdeploy.batch import RunnerOptions, run_batch
from samdeploy.errors import SamDeployError


def assert_same_outputs(out, reference) -> None:
    assert results(out) == results(reference)
    assert (out / "instances.json").read_bytes() == (reference / "instances.json").read_bytes()


def test_local_ray_gives_the_same_outputs(dataset, local_out, ray_local, tmp_path) -> None:
    out = tmp_path / "out"
    runner = RunnerOptions(workers=2, ray=True, threads=1)
    summary = run_batch(dataset, out, generator=GENERATOR, runner=runner)
    assert (summary.done, summary.failed) == (N_IMAGES, 0)
    assert_same_outputs(out, local_out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runner"] == {
        "kind": "ray", "workers": 2, "address": "local", "cpus_per_worker": 1.0, "gpus_per_worker": 0.0,
        "memory_per_worker_mb": None,
    }  # fmt: skip


def test_cluster_via_ray_address_gives_the_same_outputs(dataset, local_out, ray_cluster, tmp_path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        dataset, "-o", out, "--ray-address", ray_cluster, "--workers", "2", "--threads", "1", *GENERATOR_ARGS
    )
    assert done.returncode == 0, done.stderr
    assert f"{N_IMAGES} images: {N_IMAGES} done" in done.stdout
    assert_same_outputs(out, local_out)


def test_killed_actor_has_its_images_redone(dataset, local_out, ray_cluster, tmp_path) -> None:
    out = tmp_path / "out"
    command = batch_command(
        dataset, "-o", out, "--ray-address", ray_cluster, "--workers", "2", "--threads", "1", *GENERATOR_ARGS
    )
    with subprocess.Popen(
        command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        wait_for(lambda: len(results(out)) >= 2 or run.poll() is not None, what="the first images")
        actors = raylet_workers(ray_cluster)
        assert actors and run.poll() is None, "the run ended before an actor could be killed"
        os.kill(actors[0], signal.SIGKILL)
        assert len(results(out)) < N_IMAGES  # killed mid-run: images were still to do
        wait_for(lambda: not alive(actors[0]), what="the actor to die")
        stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert f"{N_IMAGES} done" in stdout
    assert_same_outputs(out, local_out)


def test_more_workers_than_this_ray_has_cpus_is_refused(dataset, ray_local, tmp_path) -> None:
    with pytest.raises(SamDeployError, match=r"this Ray has 2 CPUs; 3 workers x --cpus-per-worker 1 need 3"):
        run_batch(dataset, tmp_path / "out", generator=GENERATOR, runner=RunnerOptions(workers=3, ray=True))


def test_an_address_where_no_ray_answers_is_refused_at_once(dataset, tmp_path) -> None:
    """ray.init would retry such an address for over ten minutes; the run refuses it before any
    work, in one line, and writes nothing."""
    with socket.socket() as probe:  # a loopback port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, message in [
        (f"127.0.0.1:{port}", f"cannot join Ray at 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port}"),
        (f"ray://127.0.0.1:{port}", f"cannot join Ray at ray://127.0.0.1:{port}: nothing answers"),
        ("127.0.0.1", "--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got '127.0.0.1'"),
    ]:
        out = tmp_path / "out"
        done = run_cli(dataset, "-o", out, "--ray-address", address, *GENERATOR_ARGS, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), done.stderr
        assert not out.exists()
