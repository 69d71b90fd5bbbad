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
  """The read-only shared fixtures (T5 vocabulary, T5X checkpoint).

  Absent: skips on a developer machine, but FAILS when the environment variable `CI` is set
  (to anything but "", 0, false, no), so that a CI job whose fixtures were not mounted cannot
  pass by skipping the tests of the readers (HF / T5X starts) that only these artifacts
  exercise.
  """
  if not SHARED_FIXTURES.is_dir():
    message = (f"shared fixtures not found at {SHARED_FIXTURES}: mount ../shared/fixtures "
               "next to the project root or set SPT_SHARED_FIXTURES to their directory")
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
      pytest.fail(f"{message} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(message)
  return SHARED_FIXTURES


@pytest.fixture(scope="session", autouse=True)
def sample_cache():
  """The pre-rendered sample tasks that runs/local.gin reads (USE_CACHED_TASKS = True).

  launch/setup.sh builds them; a checkout whose sample code changed (new fingerprint) or a
  machine set up by hand gets them here, once, before the first test.
  """
  from spt_tasks import cache  # pylint: disable=g-import-not-at-top
  from spt_tasks import sample  # pylint: disable=g-import-not-at-top
  names = sample.TRAIN_TASKS + sample.HELDOUT_TASKS + sample.HELDOUT_SCORE_EVAL_TASKS
  if not all(cache.is_cached(str(sample.SAMPLE_CACHE_DIR), n) for n in names):
    sample.write_sample_cache()
  return sample.SAMPLE_CACHE_DIR


@pytest.fixture(scope="session")
def t5x_dir(shared_fixtures):
  """The shared legacy-format T5X checkpoint (tiny T5.1.1, step 3); its absence where the
  shared fixtures are present is a broken fixture set, not a reason to skip."""
  path = shared_fixtures / "t5x_t5_1_1_tiny" / "checkpoint_3"
  if not (path / "checkpoint").is_file():
    pytest.fail(f"T5X fixture checkpoint missing at {path} (see the fixtures README).")
  return path
