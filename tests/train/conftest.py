"""Fixtures: a small generated corpus shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.helpers import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "verse.txt")


@pytest.fixture(autouse=True)
def one_thread():
    # Small models: one thread is fastest and immune to oversubscription on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
