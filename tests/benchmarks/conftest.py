"""The e2e tests' fixtures (demo model directory, the three-process stack), reused here."""
from tests.e2e.conftest import demo_model_dir, stack  # noqa: F401
