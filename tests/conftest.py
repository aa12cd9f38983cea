"""Test set-up: 8 simulated CPU devices, set before JAX starts; one persistent XLA compilation
cache for the whole run (the launcher subprocesses of the end-to-end tests inherit it, so a
program compiled by one run is loaded, not recompiled, by the next)."""

import os
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "radjax-tests-xla-cache")
)

import pytest  # noqa: E402  (after the environment above)


# The optional references: a test that needs one asks for it by name and skips alone
# where it is not installed; the radjax-only tests of the same file still run.
@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def monai():
    return pytest.importorskip("monai")


def pytest_collection_modifyitems(items):
    """Runs the ``slow`` end-to-end tests first (stable order otherwise): under ``-n 2`` the
    long ones start at once and the short ones fill the gaps, instead of one long test
    starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
