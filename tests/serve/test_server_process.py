"""The real server: ``python -m samdeploy serve`` on a free loopback port, used over HTTP,
stopped with SIGTERM (clean exit 0); and the command's refusals before it binds."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import EXAMPLE

from samdeploy import limits

SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base: str, process: subprocess.Popen, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s  # a bound for a hung start, not a speed check
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("the server did not become ready")


def test_real_server_over_http_and_sigterm() -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "samdeploy", "serve", "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(base, process)
        with httpx.Client(base_url=base, timeout=60) as http:
            upload = http.post("/v1/images", content=EXAMPLE.read_bytes())
            assert upload.status_code == 200 and upload.json()["width"] == 640
            image_id = upload.json()["image_id"]
            answer = http.post(f"/v1/images/{image_id}/segment", json={"points": [[387, 241]], "labels": [1]})
            assert answer.status_code == 200 and len(answer.json()["masks"]) == 3
            assert answer.json()["masks"][answer.json()["best"]]["area"] > 0
            bad = http.post(
                f"/v1/images/{image_id}/segment",
                content=b'{"points": [[NaN, 1]], "labels": [1]}',
                headers={"Content-Type": "application/json"},
            )
            assert bad.status_code == 422 and "error" in bad.json()
            metrics = http.get("/metrics").text
            assert "samdeploy_requests_total" in metrics
            # The one click had the server to itself: by default it decoded on every core.
            lone = "1.0" if limits.max_threads() > 1 else "0.0"
            assert f"samdeploy_segments_alone_total {lone}" in metrics
            assert http.get("/").status_code == 200
            # An upload still encoding when SIGTERM arrives is answered before the server exits.
            big = io.BytesIO()
            Image.fromarray(np.full((3000, 4000, 3), 90, dtype=np.uint8)).save(big, format="BMP")
            pending: dict[str, httpx.Response] = {}
            sender = threading.Thread(
                target=lambda: pending.update(late=http.post("/v1/images", content=big.getvalue()))
            )
            sender.start()
            while "samdeploy_encode_queue 1.0" not in http.get("/metrics").text:
                assert sender.is_alive(), "the upload finished before it was seen encoding"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            sender.join(60)
            assert pending["late"].status_code == 200 and pending["late"].json()["width"] == 4000
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert "Application shutdown complete" in stderr
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "samdeploy", "serve", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_refusals_before_binding(tmp_path: Path) -> None:
    missing = _serve("--model", str(tmp_path / "nothing"), "--port", str(_free_port()))
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    short_key = _serve("--api-key", "abc", "--port", str(_free_port()))
    assert short_key.returncode == 2 and "at least 16" in short_key.stderr
    negative = _serve("--solo-threads", "-1", "--port", str(_free_port()))
    assert negative.returncode == 2 and "solo_threads must be >= 0" in negative.stderr
    assert len(negative.stderr.strip().splitlines()) == 1
