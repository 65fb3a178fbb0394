"""HTTP errors: one JSON shape, ``{"error": "<one line>"}``, for every failure.

Routes raise; handlers installed by :func:`install_error_handlers` turn the exception into the
response. samdeploy's own input errors map to 4xx statuses, FastAPI's validation errors are
reformatted into the same shape, and anything unexpected is logged and answered 500 without
internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from samdeploy.errors import ImageError, ImageLimitError, SamDeployError

log = logging.getLogger("samdeploy.serve")


class ApiError(Exception):
    """An error with its HTTP status (and headers) decided where it is raised."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class UnknownImage(NotFound):
    def __init__(self, image_id: str) -> None:
        super().__init__(
            f"unknown image id {image_id!r} (never uploaded, or evicted from the cache): upload the image again"
        )


def require_sam_family(package: Any, what: str) -> None:
    """Refuse (404) a client-side decoding route on a SAM 2.x package: its decoder takes three
    feature maps, not the official SAM contract those routes serve."""
    if package.is_sam2:
        raise NotFound(
            f"{what} is served for SAM packages only; this server runs a {package.family} package:"
            " segment on the server (POST /v1/images/{image_id}/segment)"
        )


class PayloadTooLarge(ApiError):
    status = 413


class Busy(ApiError):
    """The server is at a bound (encode queue, job count): try again after ``retry_after`` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def input_error_status(exc: SamDeployError) -> int:
    """The status of samdeploy's own input errors, with the message the CLI and the API give.

    An image over the pixel limit (:class:`ImageLimitError`): 413. Any other image error (empty,
    corrupt, not an image): 400. Prompt errors, prompt limits (:class:`PromptLimitError`) and
    option errors: 422, the request's content is at fault.
    """
    if isinstance(exc, ImageLimitError):
        return 413
    if isinstance(exc, ImageError):
        return 400
    return 422


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """The first validation error as one line: where, then what (``body.points.0: ...``)."""
    errors: list[dict[str, Any]] = list(exc.errors())
    if not errors:
        return "malformed request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into ``{"error": ...}``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.headers)

    @app.exception_handler(SamDeployError)
    async def _input_error(request: Request, exc: SamDeployError) -> JSONResponse:
        return error_response(input_error_status(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):  # raised while FastAPI read the body (size limit)
            return await _api_error(request, exc.__cause__)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path} (see /docs)"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server keeps running")
