"""Shared pytest settings: CUDA tests skip cleanly without a GPU; runs are single-threaded-deterministic."""
from __future__ import annotations

import os

import pytest

# Tests must not fight over the two cores of a CI machine with torch's own pool.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


CUDA = _cuda_available()


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    try:
        from hypothesis import settings

        # Fuzzing is bounded so that CI stays quick; `--hypothesis-profile=deep` digs further.
        settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
        settings.register_profile("deep", max_examples=2000, deadline=None)
        settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every device this machine can run on; 'cuda' is skipped where there is no GPU."""
    return request.param
