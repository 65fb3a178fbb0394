"""Local runs: records equal the generator's, the merged file, the manifest, resume, write failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from batch_helpers import GENERATOR, N_IMAGES, keys, results

from samdeploy.batch import OutputError, RunnerOptions, read_input, run_batch
from samdeploy.batch.outputs import OutputFolder


def test_records_equal_the_generators_for_every_image(dataset, local_out) -> None:
    from samdeploy import SamAutomaticMaskGenerator, load_model
    from samdeploy.sam.images import load_image

    documents = results(local_out)
    assert sorted(documents) == [f"{key}.json" for key in keys(dataset)]
    # One intra-op thread, as each of the run's two workers has on two cores: the same arithmetic.
    with load_model(threads=1, cache_mb=0) as model:
        generator = SamAutomaticMaskGenerator(model, **GENERATOR, output_mode="coco_rle")
        total = 0
        for key in keys(dataset):
            document = json.loads(documents[f"{key}.json"])
            image = load_image(dataset / key)
            records = generator.generate(image)
            assert document["key"] == key
            height, width = image.shape[:2]
            assert document["image"] == {"file_name": key, "height": height, "width": width}
            assert [{k: v for k, v in a.items() if k != "id"} for a in document["annotations"]] == records
            assert [a["id"] for a in document["annotations"]] == list(range(1, len(records) + 1))
            total += len(records)
    assert total > N_IMAGES  # the comparison is not between empty lists


def test_merged_coco_holds_each_image_once(dataset, local_out) -> None:
    from pycocotools.coco import COCO

    merged = json.loads((local_out / "instances.json").read_text())
    assert [image["file_name"] for image in merged["images"]] == keys(dataset)
    assert len({image["id"] for image in merged["images"]}) == N_IMAGES
    documents = {key: json.loads(results(local_out)[f"{key}.json"]) for key in keys(dataset)}
    expected = [a["segmentation"] for key in keys(dataset) for a in documents[key]["annotations"]]
    assert [a["segmentation"] for a in merged["annotations"]] == expected
    assert [a["id"] for a in merged["annotations"]] == list(range(1, len(expected) + 1))
    coco = COCO()  # pycocotools reads it as an instances file
    coco.dataset = merged
    coco.createIndex()
    assert len(coco.getAnnIds()) == len(expected)
    assert coco.annToMask(merged["annotations"][0]).sum() == merged["annotations"][0]["area"]
    manifest = json.loads((local_out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] | {} == {
        "images": N_IMAGES, "skipped": 0, "done": N_IMAGES, "failed": 0,
        "merged_images": N_IMAGES, "merged_annotations": len(expected),
    }  # fmt: skip
    assert manifest["model"]["sha256"] and GENERATOR.items() <= manifest["options"]["generator"].items()
    assert (local_out / "failures.jsonl").read_text() == ""


def test_resume_skips_finished_images_and_writes_none_twice(dataset, local_out, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    redo = ["img00.png.json", "sub/img05.png.json"]
    (out / "results" / redo[0]).unlink()
    (out / "results" / redo[1]).write_text('{"samdeploy_batch": 1, "key": "sub/img05.png", "annot')  # torn
    (out / "results" / "sub" / ".img08.png.json.x.tmp").write_text("left by a killed run")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "results").rglob("*.json")}
    summary = run_batch(dataset, out, generator=GENERATOR, runner=RunnerOptions(workers=1, threads=1))
    assert (summary.skipped, summary.done, summary.failed) == (N_IMAGES - 2, 2, 0)
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "results").rglob("*.json")}
    untouched = {p for p in before if p.relative_to(out / "results").as_posix() not in redo}
    assert all(after[p] == before[p] for p in untouched)  # not rewritten: same file, same time
    assert results(out) == results(local_out)
    assert (out / "instances.json").read_bytes() == (local_out / "instances.json").read_bytes()
    assert not list(out.rglob("*.tmp"))
    # Other options are another run: nothing of this one counts as done for it.
    item = read_input(dataset).items[0]
    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert OutputFolder(out).load(item, fingerprint) is not None
    assert OutputFolder(out).load(item, fingerprint[::-1]) is None


def test_output_folder_problems_are_one_line_errors(dataset, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        run_batch(dataset, blocker, generator=GENERATOR)
    with pytest.raises(OutputError, match="cannot create /proc/.*"):
        run_batch(dataset, Path("/proc/samdeploy-batch/out"), generator=GENERATOR)
