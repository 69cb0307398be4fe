"""Output layouts: one owner for each job's file names; shard names parsed in one place."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from hpcdiff.config import parse_job
from hpcdiff.parallel.shards import ShardBuffer, ShardStore, parse_shard_name, shard_name
from hpcdiff.pipelines.layout import MODEL_NAME, ClassifyLayout, FourierLayout


def test_classify_layout_names_and_model_override(tmp_path: Path) -> None:
    job = parse_job({"output": {"dir": str(tmp_path / "out")}})
    files = ClassifyLayout.from_job(job)
    assert files.features == tmp_path / "out" / "features.h5"
    assert files.predictions == tmp_path / "out" / "predictions.h5"
    assert files.model == tmp_path / "out" / MODEL_NAME == tmp_path / "out" / "model.npz"
    stage = files.stage("predict")
    assert (stage.shards.name, stage.rejects.name, stage.run_report.name) == (
        "predict.shards",
        "predict-rejects.jsonl",
        "predict-run.json",
    )
    named = dataclasses.replace(job, output=dataclasses.replace(job.output, model=tmp_path / "m"))
    assert ClassifyLayout.from_job(named).model == tmp_path / "m"
    fourier = FourierLayout(tmp_path)
    assert len(set(fourier.outputs)) == 6 and fourier.summary in fourier.outputs


def test_predict_help_names_the_default_model_file(capsys: pytest.CaptureFixture[str]) -> None:
    from hpcdiff.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"output.dir/{MODEL_NAME}" in text and "model.h5" not in text


def test_shard_names_round_trip_and_count_without_opening(tmp_path: Path) -> None:
    assert parse_shard_name(shard_name(1234, 56)) == (1234, 56)
    assert parse_shard_name(".shard-0000000001-000002.h5.abc.part") is None
    store = ShardStore(tmp_path / "s")
    store.directory.mkdir()
    buffer = ShardBuffer()
    buffer.add(np.array([7, 8, 9]), {"x": np.zeros((3, 2), np.float32)})
    path = store.write(buffer, config_hash="h", rank=0)
    assert path is not None and re.fullmatch(r"shard-0000000007-000003\.h5", path.name)
    assert parse_shard_name(path.name) == (7, 3)
    assert store.n_done_by_name() == 3 == store.done_frames().size
