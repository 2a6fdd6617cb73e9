"""Suite-wide settings."""

import os

# OpenMP threads sleep instead of spinning while they wait (as the CLI sets it): tests that run
# servers, subprocesses and models side by side otherwise fight for the 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
