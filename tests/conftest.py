"""Suite-wide settings and fixtures (builders and tables live in helpers.py)."""

import os

import pytest

# OpenMP threads sleep instead of spinning while they wait (as the CLI sets it): tests that run
# servers, subprocesses and models side by side otherwise fight for the 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from helpers import FAMILIES, tiny_gpt  # noqa: E402


@pytest.fixture(params=list(FAMILIES))
def family_model(request):
    """(family name, a tiny random GPT of that block variant), for each variant in turn."""
    return request.param, tiny_gpt(request.param, vector_noise=0.1)

