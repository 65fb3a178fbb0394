"""``samdeploy serve``: the HTTP API and web page (needs the ``serve`` extra).

samdeploy serve                                   # embedded default model on 127.0.0.1:8000
samdeploy serve --model models/sam_vit_b --cache-mb 2048 --workers 2
samdeploy serve --model models/sam_vit_b --device cuda   # ONNX Runtime's CUDA provider
SAMDEPLOY_API_KEY=... samdeploy serve --host 0.0.0.0
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from samdeploy.cli.app import app
from samdeploy.cli.options import DeviceOption, ModelOption, resolve_device
from samdeploy.errors import SamDeployError
from samdeploy.sam.images import DEFAULT_MAX_PIXELS


@app.command()
def serve(
    model: ModelOption = None,
    device: DeviceOption = None,
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    cache_mb: Annotated[float, typer.Option(help="bound of the embedding cache, MiB")] = 1024.0,
    workers: Annotated[int, typer.Option(help="threads that encode images")] = 1,
    queue_depth: Annotated[int, typer.Option(help="encodes that may wait; beyond: 503")] = 8,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SAMDEPLOY_API_KEY", help="require this X-API-Key on /v1 (>= 16 characters)"),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="intra-op threads per model call (0: every core); 1 suits many clients")
    ] = 1,
    solo_threads: Annotated[
        int,
        typer.Option(
            help="intra-op threads of a click's decoder call while no other model call runs"
            " (0: every core; --threads or fewer: off)"
        ),
    ] = 0,
    max_body_mb: Annotated[float, typer.Option(help="largest request body, MiB (413 beyond)")] = 50.0,
    max_pixels: Annotated[
        int, typer.Option(help="largest image, width x height (413 beyond)")
    ] = DEFAULT_MAX_PIXELS,
    max_jobs: Annotated[int, typer.Option(help="segment-everything jobs queued or running; beyond: 503")] = 4,
    graceful_timeout: Annotated[
        float, typer.Option(help="seconds in-flight requests get at shutdown")
    ] = 10.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the HTTP API (/v1, OpenAPI docs at /docs) and the web page (/) until SIGTERM or Ctrl-C."""
    try:
        from samdeploy.serve.server import insecure_binding_warning
        from samdeploy.serve.server import serve as run
        from samdeploy.serve.settings import ServeSettings
    except ModuleNotFoundError as exc:
        raise SamDeployError(
            f"samdeploy serve needs the serve extra ({exc.name} is missing): pip install 'samdeploy[serve]'"
        ) from None
    if max_body_mb <= 0:
        raise SamDeployError(f"--max-body-mb must be positive, got {max_body_mb}")
    backend, providers = resolve_device(device, None)  # a device not installed: one line, exit 2
    settings = ServeSettings(
        model=model,
        backend=backend,
        providers=None if providers is None else tuple(providers),
        host=host,
        port=port,
        threads=threads,
        solo_threads=solo_threads,
        cache_mb=cache_mb,
        workers=workers,
        queue_depth=queue_depth,
        api_key=api_key,
        max_body_bytes=int(max_body_mb * 2**20),
        max_pixels=max_pixels,
        max_jobs=max_jobs,
        graceful_shutdown_s=graceful_timeout,
    )
    if (warning := insecure_binding_warning(settings)) is not None:
        Console(stderr=True).print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    run(settings, log_level=log_level)
