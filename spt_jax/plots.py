"""Matplotlib plumbing shared by the result writers: a headless backend and one way to save.

Imported lazily by the plotting functions so that library import never pulls in matplotlib.
"""
from __future__ import annotations

import pathlib
from typing import Any, Union


def pyplot() -> Any:
  """`matplotlib.pyplot` on the Agg backend (no display needed: CI, TPU VMs, clusters)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig: Any, path: Union[str, pathlib.Path]) -> pathlib.Path:
  """Writes `fig` as a PNG at `path` (parents created), closes it and returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  pyplot().close(fig)
  return path
