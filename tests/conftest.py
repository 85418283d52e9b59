import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

from rlvr_linear.models.testing import make_pico_dir  # noqa: E402


@pytest.fixture
def pico_dir(tmp_path):
    """A random pico Qwen2 model directory (fp32, char tokenizer)."""
    return make_pico_dir(tmp_path / "pico")
