"""Test-session set-up shared by every test module.

Every test runs with 8 fake CPU devices so mesh tests need no subprocess; single-device
tests simply use device 0. The flag must be set before jax is imported anywhere.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_FIXTURES = pathlib.Path(
    os.environ.get("SPT_SHARED_FIXTURES", PROJECT_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def shared_fixtures() -> pathlib.Path:
  """The read-only shared fixtures (T5 vocabulary, T5X checkpoint); skips if absent."""
  if not SHARED_FIXTURES.is_dir():
    pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES} (set SPT_SHARED_FIXTURES)")
  return SHARED_FIXTURES
