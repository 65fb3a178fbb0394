"""Every ```python and ```bash block of README.md and docs/*.md runs as written.

Each block runs on its own, in a fresh folder that holds a copy of ``examples/`` and links to the
repository's ``.venv``, ``tools`` and ``benchmarks``, with this checkout's sources first on the
Python path and the environment's scripts (``samdeploy``) on ``PATH``. A block that cannot run on a
test machine (a real checkpoint, a GPU, a running server, a network download) is marked by the line
``<!-- docs-test: skip (reason) -->`` right before its fence, and is reported as skipped with that
reason. Output samples belong in ```text or ```console blocks, which are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>.*)\))?\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
# A guard against a block that hangs, not a speed bar: the embedded model makes a runnable block a
# matter of seconds; one that needs minutes (a full-size export, a benchmark) belongs behind a skip
# mark.
TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None  # the reason, when the block is marked

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract_blocks(text: str, page: Path) -> list[Block]:
    """The fenced python and bash blocks of a markdown page, each with its skip mark if any."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening["fence"], opening["info"].lower()
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if language in LANGUAGES:
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            mark = SKIP.search(previous)
            skip = (mark["reason"] or "marked skip").strip() if mark else None
            indent = len(opening["indent"])
            code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
            blocks.append(Block(page, index + 1, language, code, skip))
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES if page.is_file() for block in extract_blocks(page.read_text(), page)]


def test_the_extractor_finds_blocks_and_their_marks(tmp_path) -> None:
    page = tmp_path / "page.md"
    text = (
        "# t\n\n```python\nprint(1)\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n"
        "\n```text\nnot run\n```\n\n  ```bash\n  echo indented\n  ```\n"
    )
    blocks = extract_blocks(text, page)
    assert [(b.language, b.line, b.skip) for b in blocks] == [
        ("python", 3, None),
        ("bash", 8, "needs a GPU"),
        ("bash", 16, None),
    ]
    assert blocks[0].code == "print(1)\n" and blocks[2].code == "echo indented\n"
    assert BLOCKS, "README.md and docs/ have no python or bash blocks"


def _workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A scratch folder shaped like a checkout for a block to run in, and its environment."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    venv = Path(sys.prefix)
    (tmp_path / ".venv").symlink_to(venv, target_is_directory=True)
    for name in ("tools", "benchmarks"):
        if (ROOT / name).is_dir():
            (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return tmp_path, env


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_docs_block_runs(block: Block, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    cwd, env = _workspace(tmp_path)
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    try:
        result = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"{block.id} ({block.language}) ran longer than {TIMEOUT_S} s: make it smaller or mark it"
            f" <!-- docs-test: skip (reason) -->\n--- block:\n{block.code}"
        )
    assert result.returncode == 0, (
        f"{block.id} ({block.language}) exited with {result.returncode}\n--- block:\n{block.code}"
        f"--- stdout (tail):\n{result.stdout[-3000:]}\n--- stderr (tail):\n{result.stderr[-3000:]}"
    )


def test_the_readme_set_up_command_segments_the_example(tmp_path, monkeypatch, capsys) -> None:
    """The set-up block is skipped above (it creates a virtual environment); its samdeploy command,
    the first one a newcomer runs, is run here as written, in-process."""
    import shlex

    from samdeploy.cli import main

    setup = next(b for b in BLOCKS if b.page.name == "README.md" and "samdeploy segment" in b.code)
    command = next(part for part in setup.code.split("&&") if "samdeploy segment" in part)
    argv = shlex.split(command)
    assert argv[0].endswith("samdeploy")
    cwd, _ = _workspace(tmp_path)
    monkeypatch.chdir(cwd)
    code = main(argv[1:])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (cwd / "mask.png").is_file() and (cwd / "overlay.png").is_file()
