import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_build_cache(tmp_path_factory):
    """Compiled models go to a per-session cache, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QCC_CACHE_DIR", str(tmp_path_factory.mktemp("qcc-cache")))
    yield
    mp.undo()
