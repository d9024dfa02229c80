"""Fixtures: a small generated corpus shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torch_fixtures import one_thread  # noqa: F401 - autouse for every test here
from tests.train.helpers import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "verse.txt")
