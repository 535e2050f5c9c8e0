"""Shared pytest settings: two torch threads, CUDA tests skip without a GPU or the CUDA module, bounded fuzzing, shared fixtures."""
from __future__ import annotations

import os

import pytest

# Tests must not fight over the two cores of a CI machine with torch's own pool.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The run plans' measurements go to a cache of this test session (inherited by the CLI runs in
# subprocesses), never to the user's ~/.cache: every test sees decisions made in this session.
if "QMIA_FAST_PLAN_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _PLAN_DIR = tempfile.mkdtemp(prefix="qmia-plans-")
    os.environ["QMIA_FAST_PLAN_CACHE"] = os.path.join(_PLAN_DIR, "run_plans.json")
    atexit.register(shutil.rmtree, _PLAN_DIR, True)  # the session's decisions go with it


def _cuda_skip_reason() -> str | None:
    """Why CUDA tests cannot run here (no GPU, or the package was built without its CUDA module), or None."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    from qmia_fast import kernels

    if not kernels.cuda_built():
        return "qmia_fast was built without its CUDA module (no nvcc at build time)"
    return None


CUDA_SKIP = _cuda_skip_reason()
CUDA = CUDA_SKIP is None


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason=CUDA_SKIP)
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


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny convolutions gain nothing from a second, and on a busy
    machine two spinning threads can be many times slower than one."""
    from qmia_fast.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """The same for a whole module, whose module-scoped fixtures build and run models too."""
    from qmia_fast.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny Stable-Diffusion pipeline folder (diffusers_builders.build_text_to_image), built once per module;
    tests that change it work on a copy."""
    from diffusers_builders import build_text_to_image

    return build_text_to_image(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every device this machine can run on; 'cuda' is skipped where there is no GPU."""
    return request.param
