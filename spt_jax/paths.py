"""Path settings: relative paths resolved once, at the entry points; URLs untouched.

orbax refuses relative checkpoint directories (and only says so from a background thread at
the first save), and a relative path handed to a library means "relative to whatever the
working directory is when it is finally used". Every entry point (`train`, `evaluate`,
`infer`, the benchmarks) therefore resolves each path setting with `resolve` as it starts:
`runs/local_spt` becomes `<cwd>/runs/local_spt`, `~/x` is expanded, and `gs://bucket/x` (any
`scheme://` URL) passes through unchanged.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Union

_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """Whether `path` names a remote location such as `gs://bucket/dir`."""
  return bool(_URL.match(os.fspath(path)))


def resolve(path: Optional[PathLike]) -> Optional[str]:
  """Absolute form of a local path (against the working directory); URLs and None unchanged.

  An empty string stays empty (so "not set" checks downstream still see it).
  """
  if path is None:
    return None
  path = os.fspath(path)
  if not path or is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(path))
