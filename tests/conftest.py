"""Shared test fixtures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_FIXTURES = REPO.parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    """Folder of real CrystFEL files from LCLS experiments (read-only, never copied)."""
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real fixtures not found at {REAL_FIXTURES} (../shared/fixtures/real)")
    return REAL_FIXTURES


@pytest.fixture(autouse=True)
def _restore_hpcdiff_logger():
    """Undo what an in-process job's ``setup_logging`` did to the ``hpcdiff`` logger.

    A job run inside a test points the logger at that test's captured stderr and stops
    propagation; left alone, later tests would log into a closed stream and ``caplog``
    would see nothing.
    """
    logger = logging.getLogger("hpcdiff")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate
    logger.setLevel(level)
