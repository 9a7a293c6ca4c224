"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module: on a small shared machine two spinning OpenMP threads that
    compete with other processes made tiny forwards 10-30x slower; one thread keeps runtimes steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
