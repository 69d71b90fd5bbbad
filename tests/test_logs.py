"""spt_jax.logs: which log records the entry points drop (library noise) and which they keep."""
import logging
import os

from spt_jax import logs


def _record(path, level=logging.INFO, msg='message'):
  return logging.LogRecord('name', level, path, 1, msg, None, None)


def test_library_noise_is_dropped_and_the_projects_lines_and_warnings_are_kept():
  keep = logs._FILTER.filter  # pylint: disable=protected-access
  own = os.path.join(logs._PROJECT_ROOT, 'spt_jax', 'train.py')  # pylint: disable=protected-access
  site = '/usr/lib/python3/site-packages'
  assert keep(_record(own))
  for package in ('seqio/dataset_providers.py', 'jax/_src/xla_bridge.py',
                  'orbax/checkpoint/manager.py', 'tensorstore/x.py'):
    assert not keep(_record(f'{site}/{package}')), package             # INFO chatter
    assert keep(_record(f'{site}/{package}', logging.WARNING)), package  # warnings stay
  # gin's search-path misses are errors in name only; orbax's missing optional metadata too.
  assert not keep(_record(f'{site}/gin/resource_reader.py', logging.ERROR, 'Path not found: x'))
  assert not keep(_record(f'{site}/orbax/checkpoint/c.py', logging.WARNING,
                          'Metadata file does not exist: /a/b'))
  assert keep(_record(f'{site}/orbax/checkpoint/c.py', logging.WARNING, 'disk full'))


def test_a_checkout_under_a_folder_named_like_a_library_keeps_its_lines():
  keep = logs._FILTER.filter  # pylint: disable=protected-access
  # The project's own files are recognised by their location, not by path fragments.
  own = os.path.join(logs._PROJECT_ROOT, 'spt_tasks', 'sample.py')  # pylint: disable=protected-access
  assert keep(_record(own))
  assert not keep(_record('/home/me/jax/other_lib/seqio/x.py'))
