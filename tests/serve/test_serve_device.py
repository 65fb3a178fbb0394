"""``samdeploy serve --device``: the shared option of segment/everything, resolved before the
server binds, and the backend and providers it resolves to are those the server's model runs on."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from serve_helpers import make_client

from samdeploy.cli import main
from samdeploy.serve import ServeSettings


def test_device_reaches_the_loaded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServeSettings] = []
    monkeypatch.setattr("samdeploy.serve.server.serve", lambda settings, log_level: seen.append(settings))
    assert main(["serve", "--device", "cpu", "--port", "0"]) == 0
    assert (seen[0].backend, seen[0].providers) == ("onnxruntime", ("CPUExecutionProvider",))
    with make_client(backend=seen[0].backend, providers=seen[0].providers) as client:
        options = client.app.state.services.model.options
        assert (options.backend, list(options.providers)) == ("onnxruntime", ["CPUExecutionProvider"])
        assert client.get("/v1/model").status_code == 200


def test_unknown_device_is_one_line_before_binding(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("samdeploy.serve.server.serve", lambda settings, log_level: pytest.fail("served"))
    assert main(["serve", "--device", "quantum"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown --device 'quantum'") and len(err.strip().splitlines()) == 1


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_missing_gpu_lists_what_is_installed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("samdeploy.serve.server.serve", lambda settings, log_level: pytest.fail("served"))
    assert main(["serve", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda is not available") and "Installed here: cpu" in err
