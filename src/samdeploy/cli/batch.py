"""``samdeploy batch``: segment a whole dataset, on this machine or on Ray, resumable.

    samdeploy batch photos/ --output-dir out/ --workers 2 --points-per-side 16
    samdeploy batch instances.json --mode boxes --image-root images/ --output-dir out/
    samdeploy batch photos/ --mode prompts --prompts prompts.jsonl --output-dir out/
    samdeploy batch 'photos/**/*.jpg' --output-dir out/ --ray-address auto --workers 8

Writes ``out/results/<image>.json`` per image, ``out/instances.json`` (merged COCO),
``out/failures.jsonl`` and ``out/manifest.json`` (see ``docs/batch.md``). Rerunning the same command
resumes. Exit status: 0 all images done, 1 some images failed (listed in failures.jsonl), 2 bad
input or options, or the output folder cannot be written (the run stops; rerun to resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from samdeploy.cli.app import app
from samdeploy.cli.options import (
    BackendOption,
    DeviceOption,
    MaxPixelsOption,
    ModelOption,
    ThreadsOption,
    generator_options,
)
from samdeploy.errors import SamDeployError
from samdeploy.sam.images import DEFAULT_MAX_PIXELS

#: Exit status when the run finished but some images failed.
SOME_FAILED = 1


class RateColumn(ProgressColumn):
    """Images per second over the recent window (rich's own speed estimate)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:.2f} img/s", style="progress.data.speed")


@app.command()
@generator_options
def batch(
    source: Annotated[
        str, typer.Argument(metavar="INPUT", help="folder, glob, list file (one path a line) or COCO JSON")
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", metavar="DIR", help="folder for all outputs")
    ],
    mode: Annotated[
        str, typer.Option(metavar="everything|boxes|prompts", help="what to ask the model for each image")
    ] = "everything",
    prompts: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="JSON Lines: one image a line with its points/boxes (--mode prompts)"
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="folder a COCO file's file_name entries are in (default: its own)"),
    ] = None,
    multimask: Annotated[
        bool, typer.Option("--multimask", help="prompts mode: three masks per prompt, the best-scoring kept")
    ] = False,
    model: ModelOption = None,
    workers: Annotated[
        int, typer.Option(metavar="N", help="worker processes (or Ray actors), each loads the model")
    ] = 1,
    ray: Annotated[
        bool, typer.Option("--ray", help="run on Ray Data, on a local Ray started for the run")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS", help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (implies --ray)"
        ),
    ] = None,
    cpus_per_worker: Annotated[
        float, typer.Option(metavar="X", help="Ray: CPUs each actor reserves (and its default threads)")
    ] = 1.0,
    gpus_per_worker: Annotated[
        float, typer.Option(metavar="X", help="Ray: GPUs each actor reserves (with --device cuda)")
    ] = 0.0,
    memory_per_worker: Annotated[
        float | None, typer.Option(metavar="MIB", help="Ray: memory each actor reserves (default: none)")
    ] = None,
    device: DeviceOption = None,
    backend: BackendOption = None,
    threads: ThreadsOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    generator_options: dict[str, Any] | None = None,
) -> None:
    """Segment every image of a folder, glob, list or COCO file; resumable, locally or on Ray."""
    from samdeploy.batch import RunnerOptions, run_batch
    from samdeploy.cli.options import resolve_device

    if max_pixels < 0:
        raise SamDeployError("--max-pixels must be positive, or 0 for no limit")
    backend, providers = resolve_device(device, backend)
    runner = RunnerOptions(
        workers=workers,
        ray=ray or ray_address is not None,
        ray_address=ray_address,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        memory_per_worker_mb=memory_per_worker,
        threads=threads,
    )
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("images", total=None, failed=0, start=False)

        def on_start(total: int, skipped: int) -> None:
            if skipped:
                console.print(f"resuming: {skipped} of {total} images already done", highlight=False)
            progress.update(task, total=total - skipped)
            progress.start_task(task)

        def on_outcome(outcome: Any) -> None:
            if outcome.error is not None:
                progress.update(task, failed=progress.tasks[task].fields["failed"] + 1)
            progress.advance(task)

        summary = run_batch(
            source,
            output_dir,
            mode=mode,
            prompts=prompts,
            image_root=image_root,
            model=model,
            backend=backend,
            providers=providers,
            max_pixels=max_pixels or None,
            generator=generator_options,
            multimask=multimask,
            runner=runner,
            on_start=on_start,
            on_outcome=on_outcome,
        )
    done = f"{summary.done} done in {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)"
    lines = [
        f"{summary.total} images: {done}, {summary.skipped} already done, {summary.failed} failed",
        f"merged: {output_dir / 'instances.json'} ({summary.merged_images} images,"
        f" {summary.merged_annotations} annotations)",
        f"per image: {output_dir / 'results'}/, manifest: {output_dir / 'manifest.json'}",
    ]
    if summary.failed:
        lines.append(f"{summary.failed} failed: see {output_dir / 'failures.jsonl'}")
    Console().print("\n".join(lines), highlight=False, markup=False)
    if summary.failed:
        raise typer.Exit(code=SOME_FAILED)
