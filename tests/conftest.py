import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_LOGS = ROOT / "sample_logs"


def pytest_configure(config):
    # tests must never need a GPU or the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def linear_alpha_bar():
    from diffaudit.noise import named_betas, schedule_from_betas

    return schedule_from_betas(named_betas("linear"))[0]


def python_exe() -> str:
    return sys.executable
