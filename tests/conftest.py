import os

import pytest
import torch

# Tests compare floats bit for bit across runs: pin the thread count as rung's runs do.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"
