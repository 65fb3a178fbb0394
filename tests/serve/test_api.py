"""Every route of the API and every error case: the JSON error shape, the right 4xx, never a 500."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_client, png_bytes, random_image

from samdeploy import limits
from samdeploy.errors import ImageLimitError
from samdeploy.sam.automatic import SamAutomaticMaskGenerator
from samdeploy.sam.images import decode_image
from samdeploy.serve.errors import Busy
from samdeploy.serve.schemas import JobOut
from samdeploy.serve.server import _Server, insecure_binding_warning
from samdeploy.serve.settings import ServeSettings, SettingsError
from samdeploy.serve.uploads import UPLOAD_NAME

KEY = "k" * 24


def assert_error(response, status: int, *fragments: str) -> str:
    """The response is ``{"error": "<one line>"}`` with ``status``, mentioning each fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    message = body["error"]
    assert isinstance(message, str) and message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- upload -----------------------------------------------------------------------------------


def test_upload_raw_and_multipart(client: TestClient, example_png: bytes, image_id: str) -> None:
    assert image_id == hashlib.sha256(example_png).hexdigest()
    again = client.post("/v1/images", content=example_png, headers={"Content-Type": "image/png"}).json()
    assert again == {
        "image_id": image_id,
        "width": 640,
        "height": 480,
        "model_id": again["model_id"],
        "cached": True,
    }
    assert again["model_id"].startswith("custom-")
    multipart = client.post("/v1/images", files={"file": ("shapes.png", example_png, "image/png")})
    assert multipart.status_code == 200 and multipart.json() == again


def test_upload_new_image_is_not_cached(client: TestClient) -> None:
    data = png_bytes(random_image(30, 50, seed=7))
    first = client.post("/v1/images", content=data).json()
    assert first["cached"] is False and (first["width"], first["height"]) == (50, 30)
    assert client.post("/v1/images", content=data).json()["cached"] is True


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"this is not an image", "not an image"),
        (png_bytes(random_image(40, 40))[:60], "truncated or corrupt"),
    ],
    ids=["empty", "not-an-image", "truncated"],
)
def test_upload_bad_bytes(client: TestClient, body: bytes, fragment: str) -> None:
    assert_error(client.post("/v1/images", content=body), 400, fragment)


def test_upload_multipart_without_file_field(client: TestClient) -> None:
    assert_error(client.post("/v1/images", data={"image": "x"}, files={"other": ("a", b"b")}), 400, "'file'")


def test_upload_too_many_pixels(client: TestClient) -> None:
    big = png_bytes(np.zeros((1500, 1500, 3), dtype=np.uint8))  # 2.25 MP > the fixture's 2 MP limit
    assert_error(client.post("/v1/images", content=big), 413, "2,250,000 pixels", "2,000,000")
    # The sentence the Python API (and the command line) gives for the same file and limit.
    with pytest.raises(ImageLimitError) as refused:
        decode_image(big, max_pixels=2_000_000, name=UPLOAD_NAME)
    assert client.post("/v1/images", content=big).json() == {"error": str(refused.value)}


def _forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = png_bytes(np.zeros((1, 1, 3), dtype=np.uint8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def test_upload_decompression_bomb(client: TestClient) -> None:
    assert_error(client.post("/v1/images", content=_forged_png(100_000, 100_000)), 413, "pixels")


def test_body_limit(example_png: bytes) -> None:
    with make_client(max_body_bytes=1000) as small:
        assert_error(small.post("/v1/images", content=example_png), 413, "1,000 bytes")

        def chunks():  # no Content-Length: the limit is enforced while reading
            for start in range(0, len(example_png), 500):
                yield example_png[start : start + 500]

        assert_error(small.post("/v1/images", content=chunks()), 413, "1,000 bytes")
        form = small.build_request("POST", "/v1/images", files={"file": ("a.png", example_png)})
        multipart = form.read()
        streamed = (multipart[i : i + 500] for i in range(0, len(multipart), 500))
        headers = {"Content-Type": form.headers["Content-Type"]}
        assert_error(small.post("/v1/images", content=streamed, headers=headers), 413, "1,000 bytes")
        padded = b'{"points": [[1, 1]], "labels": [1]' + b" " * 2000 + b"}"
        assert_error(small.post("/v1/images/x/segment", content=iter([padded])), 413, "1,000 bytes")
        ok = small.post("/v1/images", content=png_bytes(random_image(8, 8)))
        assert ok.status_code == 200


def test_encoder_queue_full_is_503(client: TestClient) -> None:
    encoder = client.app.state.services.encoder
    limit = encoder.settings.max_queued_encodes
    for i in range(limit):  # occupy every slot without running anything
        encoder._inflight[f"busy-{i}"] = None
    try:
        response = client.post("/v1/images", content=png_bytes(random_image(10, 10, seed=99)))
        assert_error(response, 503, "queue is full")
        assert response.headers["Retry-After"] == "1"
    finally:
        for i in range(limit):
            encoder._inflight.pop(f"busy-{i}")


def test_single_flight_and_bound(client: TestClient) -> None:
    """Concurrent uploads of one uncached image share one encode; a different image beyond the
    bound is refused while it runs."""
    encoder = client.app.state.services.encoder
    release, started, calls = threading.Event(), threading.Event(), []
    real = encoder._encode

    def slow(key: str, data: bytes):
        calls.append(key)
        started.set()
        release.wait(30)
        return real(key, data)

    async def scenario() -> None:
        data = png_bytes(random_image(20, 20, seed=123))
        key = hashlib.sha256(data).hexdigest()
        waiters = [asyncio.create_task(encoder.embed(key, data)) for _ in range(3)]
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        assert encoder.pending == 1
        others = [png_bytes(random_image(20, 20, seed=200 + i)) for i in range(encoder.settings.queue_depth)]
        extra = [asyncio.create_task(encoder.embed(hashlib.sha256(d).hexdigest(), d)) for d in others]
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            overflow = png_bytes(random_image(20, 20, seed=999))
            await encoder.embed(hashlib.sha256(overflow).hexdigest(), overflow)
        release.set()
        results = await asyncio.gather(*waiters)
        assert len({id(entry) for entry, _ in results}) == 1
        assert all(cached is False for _, cached in results)
        await asyncio.gather(*extra)
        assert calls.count(key) == 1

    encoder._encode = slow
    try:
        asyncio.run(scenario())
    finally:
        encoder._encode = real
        release.set()
    assert encoder.pending == 0


def test_evicted_image_is_404() -> None:
    with make_client(cache_mb=0.6) as small:  # room for one default-model embedding (0.5 MiB)
        first = small.post("/v1/images", content=png_bytes(random_image(16, 16, seed=1))).json()["image_id"]
        small.post("/v1/images", content=png_bytes(random_image(16, 16, seed=2)))
        response = small.post(f"/v1/images/{first}/segment", json={"points": [[1, 1]], "labels": [1]})
        assert_error(response, 404, "upload the image again")
        assert small.app.state.services.encoder.cache.nbytes <= 0.6 * 2**20


# --- segment ----------------------------------------------------------------------------------


def test_segment_shapes(client: TestClient, image_id: str) -> None:
    one = client.post(f"/v1/images/{image_id}/segment", json={"points": [[387, 241]], "labels": [1]}).json()
    assert len(one["masks"]) == 3 and (one["width"], one["height"]) == (640, 480)
    assert one["best"] == int(np.argmax([m["score"] for m in one["masks"]]))
    assert set(one["masks"][0]) == {"score", "area", "bbox", "rle"}
    single = client.post(
        f"/v1/images/{image_id}/segment", json={"box": [300, 160, 450, 290], "multimask": False}
    ).json()
    assert len(single["masks"]) == 1
    boxes = client.post(
        f"/v1/images/{image_id}/segment", json={"boxes": [[0, 0, 100, 100], [300, 160, 450, 290]]}
    ).json()
    assert len(boxes["masks"]) == 6
    listed = client.post(
        f"/v1/images/{image_id}/segment",
        json={"prompts": [{"points": [[387, 241]], "labels": [1]}, {"box": [0, 0, 9, 9]}], "format": "png"},
    ).json()
    assert [len(r["masks"]) for r in listed["results"]] == [3, 3]
    assert "png" in listed["results"][1]["masks"][0]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"points": [[10, 10]], "labels": [2]}, "unknown point label 2"),
        ({"points": [[10, 10]]}, "point_labels must be supplied"),
        ({"labels": [1]}, "point_labels given without point_coords"),
        ({"points": [[10, 10], [20, 20]], "labels": [1]}, "one label per point"),
        (
            {"points": [[10, 10]] * 9, "labels": [1] * 9},
            "points per prompt: 9 points is over the limit of 8 points",
        ),
        ({"points": [[700, 10]], "labels": [1]}, "outside the 640x480 image"),
        ({"points": [[-1, 10]], "labels": [1]}, "outside"),
        ({"points": [], "labels": []}, "points is empty"),
        ({"box": [50, 50, 10, 10]}, "inverted"),
        ({"box": [0, 0, 10, 500]}, "reaches outside"),
        ({"box": [0, 0, 10, 10], "boxes": [[0, 0, 5, 5]]}, "either box or boxes"),
        ({"boxes": []}, "boxes is empty"),
        ({"boxes": [[0, 0, 5, 5]] * 5}, "boxes: 5 prompts is over the limit of 4 prompts"),
        ({"box": [0, 0, 10]}, "body.box"),
        ({"points": [[1, "a"]], "labels": [1]}, "body.points"),
        ({"points": [[1, 1]], "labels": [1], "format": "jpeg"}, "body.format"),
        ({"points": [[1, 1]], "labels": [1], "colour": "red"}, "Extra inputs"),
        ({"points": [[1, 1]], "labels": [1], "polygon_tolerance": -1}, "polygon_tolerance"),
        ({"prompts": []}, "prompts is empty"),
        ({"prompts": [{"box": [0, 0, 5, 5]}] * 5}, "prompts per call: 5 prompts is over the limit of 4"),
        ({"prompts": [{"box": [0, 0, 5, 5]}], "box": [0, 0, 5, 5]}, "not both"),
        ({"prompts": [{"boxes": [[0, 0, 5, 5]]}]}, "each box as its own prompt"),
        ({"prompts": [{"box": [0, 0, 5, 5], "format": "png"}]}, "Extra inputs"),
        ({"mask_input": "no-such-handle"}, None),
    ],
)
def test_segment_bad_prompt(client: TestClient, image_id: str, body: dict, fragment: str | None) -> None:
    response = client.post(f"/v1/images/{image_id}/segment", json=body)
    if fragment is None:
        assert_error(response, 404, "unknown or expired logits handle")
    else:
        assert_error(response, 422, fragment)


@pytest.mark.parametrize(
    "raw",
    [b'{"points": [[NaN, 1]], "labels": [1]}', b'{"box": [0, 0, Infinity, 5]}', b"{not json", b"[1, 2]"],
    ids=["nan", "infinity", "not-json", "not-an-object"],
)
def test_segment_malformed_json(client: TestClient, image_id: str, raw: bytes) -> None:
    response = client.post(
        f"/v1/images/{image_id}/segment", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422)


def test_segment_unknown_image(client: TestClient) -> None:
    response = client.post("/v1/images/0123abcd/segment", json={"points": [[1, 1]], "labels": [1]})
    assert_error(response, 404, "0123abcd", "upload the image again")


def test_logits_handle_of_another_image(client: TestClient, image_id: str) -> None:
    other = client.post("/v1/images", content=png_bytes(random_image(32, 32, seed=5))).json()["image_id"]
    handle = client.post(f"/v1/images/{other}/segment", json={"points": [[5, 5]], "labels": [1]}).json()[
        "logits_handle"
    ]
    response = client.post(
        f"/v1/images/{image_id}/segment", json={"points": [[5, 5]], "labels": [1], "mask_input": handle}
    )
    assert_error(response, 422, "another image")


# --- embedding, model, jobs -------------------------------------------------------------------


def test_embedding(client: TestClient, image_id: str) -> None:
    response = client.get(f"/v1/images/{image_id}/embedding")
    assert response.status_code == 200
    embedding = np.load(io.BytesIO(response.content), allow_pickle=False)
    services = client.app.state.services
    cached = services.encoder.lookup(image_id).embedding
    np.testing.assert_array_equal(embedding, cached.embeddings)
    assert embedding.dtype == np.float32
    assert response.headers["X-Original-Size"] == "480,640"
    assert response.headers["X-Input-Size"] == ",".join(map(str, cached.input_size))
    half = np.load(io.BytesIO(client.get(f"/v1/images/{image_id}/embedding?dtype=float16").content))
    assert half.dtype == np.float16 and half.shape == embedding.shape
    assert_error(client.get(f"/v1/images/{image_id}/embedding?dtype=int8"), 422, "dtype")
    assert_error(client.get("/v1/images/feed/embedding"), 404, "upload the image again")


def test_model_and_decoder(client: TestClient) -> None:
    services = client.app.state.services
    manifest = client.get("/v1/model").json()
    assert manifest["model_id"] == services.model_id
    assert manifest["image_size"] == services.model.image_size and manifest["format"] == "samdeploy-model"
    decoder = client.get("/v1/model/decoder.onnx")
    assert decoder.status_code == 200
    assert decoder.content == services.model.package.decoder_path.read_bytes()


def test_everything_job(client: TestClient, image_id: str) -> None:
    options = {"points_per_side": 8, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
    started = client.post(f"/v1/images/{image_id}/everything", json=options)
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["status"] in ("queued", "running") and job["records"] is None
    client.app.state.services.jobs.join()
    done = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["status"] == "done" and done["progress"] == 1.0 and done["error"] is None
    assert done["records"] and set(done["records"][0]) == {
        "segmentation",
        "area",
        "bbox",
        "predicted_iou",
        "stability_score",
        "point_coords",
        "crop_box",
    }
    assert done["records"][0]["segmentation"]["size"] == [480, 640]


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_everything_job_reuses_the_embedding_and_reports_each_batch(
    client: TestClient, image_id: str, example_png: bytes, monkeypatch: pytest.MonkeyPatch, crop_n_layers: int
) -> None:
    services = client.app.state.services
    options = {"points_per_side": 4, "points_per_batch": 4, "crop_n_layers": crop_n_layers}
    seen: list[float] = []
    generate = SamAutomaticMaskGenerator.generate_from_embedding

    def watched(self, embedding, image=None, progress=None):  # records each progress the job gets
        assert embedding is services.encoder.lookup(image_id).embedding  # the cached one

        def report(done: int, total: int) -> None:
            progress(done, total)
            seen.append(done / total)

        return generate(self, embedding, image, report)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate_from_embedding", watched)
    if not crop_n_layers:  # nothing to encode, so the upload is not even decoded
        monkeypatch.setattr("samdeploy.serve.jobs.decode_upload", lambda *a: pytest.fail("decoded"))
    job = client.post(f"/v1/images/{image_id}/everything", json=options).json()
    services.jobs.join()
    done = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["status"] == "done" and done["records"], done
    batches = 4 * (1 + 4 * crop_n_layers)  # 16 points in batches of 4 per crop; layer 1: 4 crops
    assert seen == [k / batches for k in range(1, batches + 1)]
    monkeypatch.undo()
    image = decode_image(example_png)
    want = SamAutomaticMaskGenerator(services.model, output_mode="coco_rle", **options).generate(image)
    assert done["records"] == JobOut.model_validate({**done, "records": want}).model_dump()["records"]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"box_nms_thresh": 3}, "box_nms_thresh must be in [0, 1]"),
        ({"stability_score_offset": 0}, "stability_score_offset"),
        ({"output_mode": "binary_mask"}, "Extra inputs"),
        ({"crop_n_layers": 9}, "crop_n_layers"),
    ],
)
def test_everything_bad_options(client: TestClient, image_id: str, options: dict, fragment: str) -> None:
    assert_error(client.post(f"/v1/images/{image_id}/everything", json=options), 422, fragment)


def test_everything_unknown_image_and_job(client: TestClient) -> None:
    assert_error(client.post("/v1/images/beef/everything"), 404, "upload the image again")
    assert_error(client.get("/v1/jobs/nope"), 404, "unknown job id")


def test_jobs_are_bounded(example_png: bytes) -> None:
    with make_client(max_jobs=1) as small:
        key = small.post("/v1/images", content=example_png).json()["image_id"]
        jobs = small.app.state.services.jobs
        release, real = threading.Event(), jobs._run

        def held(*task):  # the first job waits: the next one stays queued
            release.wait(30)
            real(*task)

        jobs._run = held
        try:
            first = small.post(f"/v1/images/{key}/everything", json={"points_per_side": 4})
            assert first.status_code == 202
            response = small.post(f"/v1/images/{key}/everything", json={"points_per_side": 4})
            assert_error(response, 503, "limit is 1")
            assert response.headers["Retry-After"] == "1"
        finally:
            release.set()
        jobs.join()
        jobs._run = real
        assert small.get(f"/v1/jobs/{first.json()['job_id']}").json()["status"] == "done"
        assert small.post(f"/v1/images/{key}/everything", json={"points_per_side": 4}).status_code == 202


# --- auth, health, metrics, static, unknown routes --------------------------------------------


def test_api_key(example_png: bytes) -> None:
    with make_client(api_key=KEY) as keyed:
        assert_error(keyed.post("/v1/images", content=example_png), 401, "X-API-Key")
        assert_error(keyed.get("/v1/model", headers={"X-API-Key": "wrong" * 5}), 401, "X-API-Key")
        assert keyed.app.state.services.encoder.cache.misses == 0  # refused before any work
        assert keyed.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
        assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200


def test_settings_refuse_insecure_or_bad_values() -> None:
    with pytest.raises(SettingsError, match="at least 16"):
        ServeSettings(api_key="short")
    with pytest.raises(SettingsError, match="workers"):
        ServeSettings(workers=0)
    with pytest.raises(SettingsError, match="port"):
        ServeSettings(port=70000)
    # The server may be stricter than samdeploy.limits, never looser.
    for name, limit in [
        ("max_points", limits.MAX_POINTS),
        ("max_prompts", limits.MAX_PROMPTS),
        ("max_boxes", limits.MAX_PROMPTS),
        ("max_body_bytes", limits.MAX_REQUEST_BYTES),
        ("max_pixels", limits.PIXELS_CEILING),
    ]:
        with pytest.raises(SettingsError, match=f"{name}: .* is over the limit of {limit.value:,}"):
            ServeSettings(**{name: limit.value + 1})
        ServeSettings(**{name: limit.value})
    with pytest.raises(SettingsError, match="threads"):
        ServeSettings(threads=limits.max_threads() + 1)
    with pytest.raises(SettingsError, match="solo_threads"):
        ServeSettings(solo_threads=limits.max_threads() + 1)
    with pytest.raises(SettingsError, match="solo_threads"):
        ServeSettings(solo_threads=-1)
    assert insecure_binding_warning(ServeSettings(host="0.0.0.0")) is not None
    assert insecure_binding_warning(ServeSettings(host="0.0.0.0", api_key=KEY)) is None
    assert insecure_binding_warning(ServeSettings(host="::1")) is None
    assert insecure_binding_warning(ServeSettings(host="localhost")) is None


def test_health_and_draining() -> None:
    import uvicorn

    with make_client() as fresh:
        assert fresh.get("/healthz").json()["status"] == "ok"
        assert fresh.get("/readyz").json()["status"] == "ready"
        server = _Server(uvicorn.Config(fresh.app))
        server.handle_exit(15, None)  # what SIGTERM does: not ready from now on
        assert server.should_exit
        assert_error(fresh.get("/readyz"), 503, "shutting down")
        assert fresh.get("/healthz").status_code == 200


def test_metrics(client: TestClient, image_id: str) -> None:
    client.post(f"/v1/images/{image_id}/segment", json={"points": [[1, 1]], "labels": [1]})
    client.post("/v1/images/nope/segment", json={"points": [[1, 1]], "labels": [1]})
    text = client.get("/metrics").text
    route = 'route="/v1/images/{image_id}/segment"'
    assert f'samdeploy_requests_total{{method="POST",{route},status="200"}}' in text
    assert f'samdeploy_requests_total{{method="POST",{route},status="404"}}' in text
    for name in (
        "samdeploy_request_seconds_bucket",
        "samdeploy_encode_seconds_count",
        "samdeploy_decode_seconds_count",
        "samdeploy_cache_bytes",
        "samdeploy_cache_hits_total",
        "samdeploy_cache_misses_total",
        "samdeploy_encode_queue",
        "samdeploy_jobs_active",
    ):
        assert name in text, name
    assert "samdeploy_segments_alone_total 0.0" in text  # this app decodes on --threads only


def test_solo_threads_setting() -> None:
    """Why: ``--solo-threads`` 0 means every core, and the second session is made only where a
    lone click would get more threads than ``--threads`` gives it."""
    cpus = limits.max_threads()
    assert ServeSettings(threads=1).decoder_solo_threads == (cpus if cpus > 1 else None)
    assert ServeSettings(threads=0).decoder_solo_threads is None  # every call on every core already
    assert ServeSettings(threads=1, solo_threads=1).decoder_solo_threads is None
    # On a GPU the decoders do not run on CPU threads (a second TensorRT session would build its
    # engines twice): no solo session there.
    assert ServeSettings(threads=1, providers=("cuda", "cpu")).decoder_solo_threads is None
    expected = cpus if cpus > 1 else None
    assert ServeSettings(threads=1, providers=("CPUExecutionProvider",)).decoder_solo_threads == expected
    if cpus > 2:
        assert ServeSettings(threads=2, solo_threads=2).decoder_solo_threads is None
        assert ServeSettings(threads=1, solo_threads=2).decoder_solo_threads == 2


def test_a_request_is_alone_only_with_nothing_else_in_flight() -> None:
    """Why: a decoder call on every core beside other requests, encodes or jobs takes cores they
    need (50 clients clicking: 22% fewer clicks per second when every call ran on both cores)."""
    from types import SimpleNamespace

    from samdeploy.serve.deps import Services

    def services(in_flight: int, pending: int = 0, active: int = 0) -> Services:
        return Services(
            settings=ServeSettings(),
            model=None,  # type: ignore[arg-type]
            model_id="m",
            encoder=SimpleNamespace(pending=pending),  # type: ignore[arg-type]
            logits=None,  # type: ignore[arg-type]
            jobs=SimpleNamespace(active=active),  # type: ignore[arg-type]
            metrics=None,  # type: ignore[arg-type]
            segments_in_flight=in_flight,
        )

    assert services(1).alone()
    assert not services(2).alone()
    assert not services(1, pending=1).alone()
    assert not services(1, active=1).alone()
    # The route's block: counts itself in flight and tells the model, then restores both.
    from samdeploy.engine.inference import SOLO_ALLOWED

    server = services(0)
    solo = server.settings.decoder_solo_threads is not None  # None on a 1-CPU machine
    with server.segment_request() as first:
        assert first == solo and SOLO_ALLOWED.get() == solo and server.segments_in_flight == 1
        with server.segment_request() as second:
            assert not second and not SOLO_ALLOWED.get() and server.segments_in_flight == 2
    assert SOLO_ALLOWED.get() and server.segments_in_flight == 0


def test_static_page_docs_and_unknown_routes(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/docs").status_code == 200
    assert "/v1/images/{image_id}/segment" in client.get("/openapi.json").json()["paths"]
    assert_error(client.get("/v1/nothing"), 404, "no such route")
    assert_error(client.delete("/v1/images"), 405, "not allowed")
    assert_error(client.get("/no-such-file.js"), 404)


def test_shutdown_fails_queued_jobs(example_png: bytes) -> None:
    with make_client(max_jobs=2) as small:
        key = small.post("/v1/images", content=example_png).json()["image_id"]
        jobs = small.app.state.services.jobs
        release, real = threading.Event(), jobs._run

        def held(*task):  # the worker waits before its first job: both stay queued
            release.wait(30)
            real(*task)

        jobs._run = held
        ids = [
            small.post(f"/v1/images/{key}/everything", json={"points_per_side": 4}).json()["job_id"]
            for _ in range(2)
        ]
        threading.Timer(0.2, release.set).start()
    for job_id in ids:  # the lifespan teardown has run
        job = jobs.get(job_id)
        assert job.status == "failed" and "shut down" in job.error
