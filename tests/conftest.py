"""Test configuration: the repository root on sys.path, and small shared fixtures."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Two cores on CI: keep intra-op threads small so tests do not oversubscribe.
torch.set_num_threads(2)


@pytest.fixture
def oracle():
    """The yolov5==7.0.14 reference package (test-only), see tests/oracle.py."""
    from tests.oracle import load_oracle

    return load_oracle()
