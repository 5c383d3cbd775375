
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run on the device machine)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def single_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP barrier stalls on a shared, busy CPU (10x).
    Modules of tiny-tensor tests opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# The demo model and the three-process stack, shared by every test that asks (started once).
from tests.stack import demo_model_dir, stack  # noqa: E402,F401
