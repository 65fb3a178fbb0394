"""A full disk and an unwritable output folder, made for real: the run stops with one line, what it
wrote is whole, its state says why it stopped, and the same command resumes once the fault is gone.

Each test runs the command in a private mount namespace (``mounts``) where the output folder is a
tiny tmpfs or a read-only bind mount; this machine's other processes never see those mounts.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from batch_helpers import GENERATOR_ARGS, N_IMAGES, MountNamespace, batch_command, results, wait_for

from samdeploy.batch.outputs import RESERVE_BYTES

PAGE = 4096


def command(dataset: Path, out: Path) -> list[str]:
    return batch_command(dataset, "-o", out, "--workers", "1", "--threads", "1", *GENERATOR_ARGS)


def error_line(stderr: str) -> str:
    """The run's one-line error: stderr holds nothing else (no traceback, no wrapped lines)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def assert_whole(out: Path) -> None:
    """Every file the stopped run left is whole: documents and state parse, no temporary files."""
    assert not list(out.rglob("*.tmp"))
    for document in results(out).values():
        assert json.loads(document)["samdeploy_batch"] == 1
    for line in (out / "failures.jsonl").read_text().splitlines():
        json.loads(line)


def assert_resumes(mounts: MountNamespace, dataset: Path, out: Path, finished: int, local_out: Path) -> None:
    """The same command, rerun, skips what was finished and ends equal to an uninterrupted run."""
    rerun = mounts.run(*command(dataset, out))
    assert rerun.returncode == 0, rerun.stderr
    if finished:
        assert f"resuming: {finished} of {N_IMAGES} images already done" in rerun.stderr
    seen = mounts.path(out)
    assert results(seen) == results(local_out)
    assert (seen / "instances.json").read_bytes() == (local_out / "instances.json").read_bytes()
    assert json.loads((seen / "manifest.json").read_text())["status"] == "complete"
    assert not (seen / ".reserve").exists()


def test_full_disk_stops_the_run_with_its_state_written_and_resumes(dataset, local_out, tmp_path, mounts):
    """The output folder is a tmpfs with room for the reserve, the manifest and a few documents:
    the run must stop there with one line, leave whole documents and a manifest that says why it
    stopped (written with the reserved space), and finish once the disk is larger."""
    out = tmp_path / "out"
    out.mkdir()
    mounts.mount("-t", "tmpfs", "-o", f"size={RESERVE_BYTES + 8 * PAGE}", "tmpfs", out)
    stopped = mounts.run(*command(dataset, out))
    assert stopped.returncode == 2, stopped.stderr
    line = error_line(stopped.stderr)
    assert "No space left on device" in line and "rerun the same command to resume" in line
    seen = mounts.path(out)
    finished = len(results(seen))
    assert 0 < finished < N_IMAGES
    assert_whole(seen)
    assert not (seen / "instances.json").exists()
    manifest = json.loads((seen / "manifest.json").read_text())
    assert manifest["status"].startswith("stopped: cannot write") and "No space left" in manifest["status"]
    assert manifest["counts"]["done"] == finished

    mounts.mount("-o", "remount,size=16m", out)  # space given back
    assert_resumes(mounts, dataset, out, finished, local_out)


def test_disk_full_mid_line_leaves_whole_failure_lines_and_the_manifest(tmp_path, mounts) -> None:
    """A failures.jsonl line that the disk cuts short is removed (the file holds whole lines only),
    and the manifest written after it still fits: the reserved space is given back for it."""
    out = tmp_path / "out"
    out.mkdir()
    mounts.mount("-t", "tmpfs", "-o", f"size={RESERVE_BYTES + 2 * PAGE}", "tmpfs", out)
    script = textwrap.dedent(
        f"""
        from samdeploy.batch.inputs import WorkItem
        from samdeploy.batch.outputs import OutputError, OutputFolder
        with OutputFolder({str(out)!r}) as folder:
            try:
                for i in range(100):
                    folder.record_failure(WorkItem(f"img{{i}}.png", f"/in/img{{i}}.png"), "x" * 1500)
            except OutputError as exc:
                print(i, exc)
            folder.write_json("manifest.json", {{"status": "stopped", "padding": "y" * 3000}})
        """
    )
    done = mounts.run(sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    cut_at, message = done.stdout.split(" ", 1)
    assert 0 < int(cut_at) < 100 and "No space left on device" in message
    seen = mounts.path(out)
    lines = (seen / "failures.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["image"] for line in lines[:-1]] == [
        f"img{i}.png" for i in range(int(cut_at))
    ]
    assert json.loads((seen / "manifest.json").read_text())["status"] == "stopped"
    assert not (seen / ".reserve").exists() and not list(seen.rglob("*.tmp"))


def test_read_only_output_folder_is_refused_then_resumes(dataset, local_out, tmp_path, mounts) -> None:
    """An output folder mounted read-only: one line naming it and the cause, nothing written; the
    same command works once it is writable again."""
    out = tmp_path / "out"
    out.mkdir()
    mounts.mount("--bind", out, out)
    mounts.mount("-o", "remount,bind,ro", out)
    refused = mounts.run(*command(dataset, out))
    assert refused.returncode == 2, refused.stderr
    line = error_line(refused.stderr)
    assert f"cannot create {out / 'results'}: Read-only file system" in line
    assert not any(mounts.path(out).iterdir())

    mounts.mount("-o", "remount,bind,rw", out)
    assert_resumes(mounts, dataset, out, 0, local_out)


def test_results_folder_turning_read_only_mid_run_stops_then_resumes(dataset, local_out, tmp_path, mounts):
    """results/ becomes read-only while images are being written: the run stops with one line, the
    manifest (beside results/, still writable) says why, and the rerun completes."""
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    mounts.mount("--bind", out / "results", out / "results")
    seen = mounts.path(out)
    with mounts.start(*command(dataset, out)) as run:
        wait_for(lambda: len(results(seen)) >= 2 or run.poll() is not None, what="the first images")
        # EBUSY while a document is being written (a writer is open on the mount): try again.
        wait_for(
            lambda: mounts.run("mount", "-o", "remount,bind,ro", out / "results").returncode == 0,
            timeout=30,
            what="results/ to turn read-only",
        )
        _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr
    line = error_line(stderr)
    assert f"cannot write {out / 'results'}/" in line and "Read-only file system" in line
    finished = len(results(seen))
    assert 2 <= finished < N_IMAGES
    assert_whole(seen)
    manifest = json.loads((seen / "manifest.json").read_text())
    assert (
        manifest["status"].startswith("stopped: cannot write")
        and "Read-only file system" in manifest["status"]
    )

    mounts.mount("-o", "remount,bind,rw", out / "results")
    assert_resumes(mounts, dataset, out, finished, local_out)


def test_disk_too_full_for_the_reserve_is_refused_before_any_work(dataset, tmp_path, mounts) -> None:
    """A disk without room for the state reserve is refused at the start, with one line saying so:
    a run that could not record why it stopped must not begin."""
    out = tmp_path / "out"
    out.mkdir()
    mounts.mount("-t", "tmpfs", "-o", f"size={RESERVE_BYTES // 2}", "tmpfs", out)
    refused = mounts.run(*command(dataset, out))
    assert refused.returncode == 2, refused.stderr
    line = error_line(refused.stderr)
    assert (
        f"cannot reserve {RESERVE_BYTES // 1024} KiB in {out}" in line and "No space left on device" in line
    )
    seen = mounts.path(out)
    assert not results(seen) and not (seen / "manifest.json").exists() and not (seen / ".reserve").exists()
