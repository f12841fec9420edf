"""Kernel tests build many small C modules: keep their cache in a per-session temporary directory."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def qcc_cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qcc-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QCC_CACHE_DIR", str(path))
        yield path
