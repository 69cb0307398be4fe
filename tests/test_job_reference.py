"""docs/job-file.md is generated from the config schema and cannot drift from it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import get_type_hints

from hpcdiff.config import JobConfig
from hpcdiff.config.reference import _field_doc, _section_class, _sentences, job_file_reference

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "job-file.md"


def _keys(name: str, cls: type):
    hints = get_type_hints(cls)
    sentences = _sentences(inspect.getdoc(cls) or "")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = _section_class(hints[f.name])
        if sub is not None:
            yield from _keys(f"{name}.{f.name}", sub)
        else:
            yield name, f, _field_doc(f, sentences, f"{name}.{f.name}")


def _all_keys():
    hints = get_type_hints(JobConfig)
    for f in dataclasses.fields(JobConfig):
        cls = _section_class(hints[f.name])
        if cls is not None and f.init:
            yield from _keys(f.name, cls)


def test_committed_reference_is_the_generated_one():
    assert REFERENCE.read_text() == job_file_reference(), (
        "docs/job-file.md is out of date: run "
        "`python -m hpcdiff.config.reference --write docs/job-file.md`"
    )


def test_every_key_is_in_the_reference_with_a_meaning():
    text = job_file_reference()
    keys = list(_all_keys())
    assert len(keys) > 100
    for section, f, doc in keys:
        assert f"## `[{section}]`" in text, section
        assert f"| `{f.name}` |" in text, f"{section}.{f.name}"
        assert doc, f"[{section}] {f.name} has no meaning: add it to hpcdiff/config/key_docs.py"


def test_reference_rows_show_type_default_and_limits():
    text = job_file_reference()
    assert (
        "| `layer` | one of 'auto', 'fc6+fc7', 'fc7', 'pool5', 'gap', 'pool4+pool5' | \"auto\" |"
        in text
    )
    assert "| `n_components` | int | 50 | must be > 0 |" in text
    assert "| `diffuse_fraction` | float | 0.3 | must lie in [0, 1] |" in text
    assert "## `[fourier.cluster]`" in text
