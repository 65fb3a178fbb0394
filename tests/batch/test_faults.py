"""Faults: a killed worker process, a killed driver, bad images: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from batch_helpers import (
    GENERATOR_ARGS,
    N_IMAGES,
    alive,
    batch_command,
    cmdline,
    descendants,
    environment,
    keys,
    results,
    run_cli,
    wait_for,
)


def start(dataset, out) -> subprocess.Popen[str]:
    command = batch_command(dataset, "-o", out, "--workers", "2", "--threads", "1", *GENERATOR_ARGS)
    return subprocess.Popen(
        command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def workers(driver: int) -> list[int]:
    return [pid for pid in descendants(driver) if "spawn_main" in cmdline(pid)]


def test_killed_worker_process_has_its_images_redone(dataset, local_out, tmp_path) -> None:
    out = tmp_path / "out"
    with start(dataset, out) as run:
        wait_for(lambda: len(results(out)) >= 2 or run.poll() is not None, what="the first images")
        pool = workers(run.pid)
        assert len(pool) == 2 and run.poll() is None
        os.kill(pool[0], signal.SIGKILL)
        assert len(results(out)) < N_IMAGES  # killed mid-run: images were still to do
        stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert f"{N_IMAGES} done" in stdout
    assert results(out) == results(local_out)
    assert (out / "instances.json").read_bytes() == (local_out / "instances.json").read_bytes()


def test_driver_killed_then_rerun_equals_an_uninterrupted_run(dataset, local_out, tmp_path) -> None:
    out = tmp_path / "out"
    with start(dataset, out) as run:
        wait_for(lambda: len(results(out)) >= 4 or run.poll() is not None, what="the first images")
        pool = workers(run.pid)
        run.send_signal(signal.SIGKILL)
        run.communicate()
    wait_for(
        lambda: not any(alive(pid) for pid in pool), timeout=30, what="the workers to die with the driver"
    )
    finished = len(results(out))
    assert 4 <= finished < N_IMAGES and not (out / "instances.json").exists()
    rerun = run_cli(dataset, "-o", out, "--workers", "2", "--threads", "1", *GENERATOR_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {finished} of {N_IMAGES} images already done" in rerun.stderr
    assert results(out) == results(local_out)
    assert (out / "instances.json").read_bytes() == (local_out / "instances.json").read_bytes()
    assert not list(out.rglob("*.tmp"))


def test_bad_images_are_listed_and_the_others_finish(dataset, local_out, tmp_path) -> None:
    good = keys(dataset)[:3]
    broken = tmp_path / "truncated.png"
    broken.write_bytes((dataset / good[0]).read_bytes()[:120])
    (tmp_path / "text.jpg").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    listing = tmp_path / "images.txt"
    lines = [str(dataset / key) for key in good] + [
        "missing.png",
        "truncated.png",
        "text.jpg",
        "# a comment",
        "empty.png",
    ]
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    done = run_cli(listing, "-o", out, "--threads", "1", *GENERATOR_ARGS)
    assert done.returncode == 1, done.stderr  # some images failed
    assert "4 failed" in done.stdout and "Traceback" not in done.stderr
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = {f["image"]: f["reason"] for f in failures}
    assert sorted(reasons) == ["empty.png", "missing.png", "text.jpg", "truncated.png"]
    assert reasons["missing.png"].startswith("image not found")
    assert "truncated or corrupt" in reasons["truncated.png"]
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["empty.png"].startswith("image file is empty")
    merged = json.loads((out / "instances.json").read_text())
    assert len(merged["images"]) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["failed"] == 4 and manifest["status"] == "complete, some images failed"
    # The three good images have the same documents as in the folder run (same key, same task).
    reference = results(local_out)
    for key in good:
        name = f"{(dataset / key).as_posix().lstrip('/')}.json"
        document = json.loads(results(out)[name])
        assert document["annotations"] == json.loads(reference[f"{key}.json"])["annotations"]
