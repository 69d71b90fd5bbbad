"""Statistics on SPT retrieval logs: is the memory used, and is its use structured?

A retrieval log is what the network sows into the `'retrieval'` collection,
gathered over examples: `indices` `[N, k]` (int, slot ids in `[0, M)`) plus, per
example, a label (the task it came from, or that task's cluster). From it we ask
whether the memory is used and whether its use is structured:

Health (is the bank used, or has it collapsed onto a few slots?):
  * `slot_usage` — counts per slot `[M]` (each of the `k` retrievals of an
    example counts once);
  * `normalized_entropy` — entropy of the usage distribution divided by `log M`:
    1 means every slot is used equally, 0 means one slot takes everything;
  * `unused_fraction` — fraction of the `M` slots never retrieved.

Structure (does retrieval follow the discrete prompt?):
  * `overlap_matrix` — held-out tasks × training clusters, overlap of their
    normalised slot-usage distributions. Default `'intersection'`: histogram
    intersection `sum_m min(p_m, q_m)` in [0, 1], the share of retrieval mass the
    two distributions have in common (1 = identical usage, 0 = disjoint slots).
    `'cosine'` (cosine of the two distributions) is the alternative.
  * `most_used_slots` — the smallest set of slots that holds at least `mass`
    (default 50%) of a cluster's retrievals, taking slots in decreasing count
    order (ties: lower slot id first).
  * `share_in_top_slots` — the share of a held-out task's retrievals that fall in
    that set; `chance` = set size / M is what a uniform retriever would get.

All functions take plain arrays, so they run on logs saved by any tool;
`plot_heatmap` writes a PNG with matplotlib's Agg backend. `usage_summary` is the
one implementation of the health statistics: it also runs on jax arrays (pass
``xp=jax.numpy``), which is how `memory_health.retrieval_statistics` computes them
inside the jitted train step.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from spt_jax import plots

PathLike = Union[str, pathlib.Path]

OVERLAP_METHODS = ('intersection', 'cosine')


def slot_usage(indices: Any, memory_size: int) -> np.ndarray:
  """Counts of each memory slot in a retrieval log.

  Args:
    indices: retrieved slot ids of any shape (typically `[N, k]`).
    memory_size: M, the number of memory slots.

  Returns:
    `[M]` int64 counts.

  Raises:
    ValueError: if M < 1 or an index lies outside `[0, M)`.
  """
  if memory_size < 1:
    raise ValueError(f'memory_size must be >= 1, got {memory_size}; retrieval '
                     'statistics need a memory bank (memory_size > 0).')
  flat = np.asarray(indices).reshape(-1)
  if flat.size and not np.issubdtype(flat.dtype, np.integer):
    raise ValueError(f'retrieved indices must be integers, got dtype {flat.dtype}.')
  flat = flat.astype(np.int64)
  if flat.size and (flat.min() < 0 or flat.max() >= memory_size):
    raise ValueError(
        f'retrieved slot ids must lie in [0, {memory_size}); got range '
        f'[{flat.min()}, {flat.max()}]. Is memory_size the bank size M used in '
        'the run?')
  return np.bincount(flat, minlength=memory_size)


def usage_distribution(counts: Any) -> np.ndarray:
  """Normalised slot usage `[M]` (sums to 1; all zeros if there are no retrievals)."""
  counts = np.asarray(counts, dtype=np.float64)
  total = counts.sum()
  return counts / total if total > 0 else np.zeros_like(counts)


def usage_summary(counts: Any, xp: Any = np) -> Dict[str, Any]:
  """Health statistics of slot-usage counts `[M]`, in numpy or (``xp=jnp``) under jit.

  Args:
    counts: `[M]` retrieval counts per slot.
    xp: the array module (`numpy` or `jax.numpy`).

  Returns:
    `{'entropy'` (nats of the usage distribution; 0 without retrievals),
    `'normalized_entropy'` (entropy ÷ log M: 1 = uniform; 1 for M = 1; NaN without
    retrievals), `'unused_fraction'` (slots with zero count), `'used_fraction'`}.
    Scalars are Python floats for numpy input and 0-d arrays for jax.
  """
  counts = xp.asarray(counts)
  size = counts.shape[0]
  c = counts.astype(xp.float64 if xp is np else xp.float32)
  total = xp.sum(c)
  p = c / xp.maximum(total, 1.)
  entropy = -xp.sum(xp.where(p > 0, p * xp.log(xp.where(p > 0, p, 1.)), 0.))
  ratio = entropy / math.log(size) if size > 1 else xp.ones_like(entropy)
  ratio = xp.where(total > 0, ratio, xp.nan)
  unused = xp.mean((counts == 0).astype(c.dtype))
  out = {'entropy': entropy, 'normalized_entropy': ratio, 'unused_fraction': unused,
         'used_fraction': 1. - unused}
  return {k: float(v) for k, v in out.items()} if xp is np else out


def normalized_entropy(counts: Any) -> float:
  """Entropy of the slot-usage distribution ÷ log M, in [0, 1].

  Uses natural logarithms (the ratio does not depend on the base). For M = 1 the
  ratio is defined as 1 (one slot is all there is). NaN when there are no
  retrievals.
  """
  return usage_summary(np.asarray(counts).reshape(-1))['normalized_entropy']


def unused_fraction(counts: Any) -> float:
  """Fraction of the M slots with zero retrievals."""
  return usage_summary(np.asarray(counts).reshape(-1))['unused_fraction']


def health(indices: Any, memory_size: int) -> Dict[str, float]:
  """Retrieval-health summary of one log.

  Returns:
    `{'num_retrievals', 'entropy_ratio', 'unused_fraction', 'top_slot_share'}`;
    `top_slot_share` is the share of retrievals taken by the single most used slot.
  """
  counts = slot_usage(indices, memory_size)
  total = int(counts.sum())
  return {
      'num_retrievals': total,
      'entropy_ratio': normalized_entropy(counts),
      'unused_fraction': unused_fraction(counts),
      'top_slot_share': float(counts.max() / total) if total else float('nan'),
  }


def usage_by_label(indices: Any, labels: Sequence[str],
                   memory_size: int) -> Dict[str, np.ndarray]:
  """Slot counts per label (task or cluster).

  Args:
    indices: `[N, k]` retrieved slot ids, one row per example.
    labels: `[N]` label of each example.
    memory_size: M.

  Returns:
    `{label: [M] counts}`, labels in first-seen order.
  """
  indices = np.asarray(indices)
  if indices.ndim == 1:
    indices = indices[:, None]
  if len(labels) != indices.shape[0]:
    raise ValueError(f'usage_by_label: {indices.shape[0]} rows of indices but '
                     f'{len(labels)} labels; give one label per example.')
  labels_arr = np.asarray(list(labels), dtype=object)
  out = {}
  for label in dict.fromkeys(labels):
    out[label] = slot_usage(indices[labels_arr == label], memory_size)
  return out


def overlap(counts_a: Any, counts_b: Any, method: str = 'intersection') -> float:
  """Overlap of two slot-usage histograms (see the module docstring)."""
  p, q = usage_distribution(counts_a), usage_distribution(counts_b)
  if p.shape != q.shape:
    raise ValueError(f'overlap: histograms have different sizes {p.shape} vs '
                     f'{q.shape}; both must have M bins.')
  if method == 'intersection':
    return float(np.minimum(p, q).sum())
  if method == 'cosine':
    norm = np.linalg.norm(p) * np.linalg.norm(q)
    return float(p @ q / norm) if norm > 0 else 0.0
  raise ValueError(f'unknown overlap method {method!r}; use one of '
                   f'{OVERLAP_METHODS}.')


def overlap_matrix(row_usage: Mapping[str, Any], col_usage: Mapping[str, Any],
                   method: str = 'intersection'
                  ) -> Tuple[list, list, np.ndarray]:
  """Overlap of every row histogram (e.g. held-out task) with every column (cluster).

  Returns:
    `(row_labels, col_labels, matrix [R, C])`.
  """
  rows, cols = list(row_usage), list(col_usage)
  matrix = np.array([[overlap(row_usage[r], col_usage[c], method) for c in cols]
                     for r in rows], dtype=np.float64).reshape(len(rows), len(cols))
  return rows, cols, matrix


def most_used_slots(counts: Any, mass: float = 0.5) -> np.ndarray:
  """The smallest set of slots holding >= `mass` of the retrievals.

  Slots are taken in decreasing count order, ties broken by lower slot id, until
  their cumulative share reaches `mass`. Empty if there are no retrievals.
  """
  if not 0 < mass <= 1:
    raise ValueError(f'mass must be in (0, 1], got {mass}.')
  counts = np.asarray(counts, dtype=np.float64)
  total = counts.sum()
  if total == 0:
    return np.zeros((0,), np.int64)
  order = np.lexsort((np.arange(counts.size), -counts))
  cumulative = np.cumsum(counts[order]) / total
  # Tolerance so that e.g. 0.1 + 0.2 + 0.2 counts as reaching 0.5.
  n = int(np.searchsorted(cumulative, mass - 1e-12) + 1)
  return np.sort(order[:n])


def share_in_top_slots(query_counts: Any, reference_counts: Any,
                       mass: float = 0.5) -> Dict[str, float]:
  """Share of a held-out task's retrievals inside a cluster's most-used slots.

  Args:
    query_counts: `[M]` slot counts of the held-out task.
    reference_counts: `[M]` slot counts of the training cluster.
    mass: defines the cluster's most-used slots (see `most_used_slots`).

  Returns:
    `{'share', 'num_slots', 'chance'}`: the share of the query's retrievals in
    the set, the set's size, and `num_slots / M` (a uniform retriever's share).
  """
  slots = most_used_slots(reference_counts, mass)
  p = usage_distribution(query_counts)
  return {'share': float(p[slots].sum()), 'num_slots': int(slots.size),
          'chance': float(slots.size / p.size)}


def resemblance_report(heldout_usage: Mapping[str, Any],
                       cluster_usage: Mapping[str, Any],
                       resembles: Mapping[str, str],
                       mass: float = 0.5) -> Dict[str, Dict[str, Any]]:
  """Per held-out task, its share in the most-used slots of the cluster it resembles.

  Args:
    heldout_usage: `{held-out task: [M] counts}`.
    cluster_usage: `{training cluster: [M] counts}`.
    resembles: `{held-out task: cluster it was built to resemble}`.
    mass: see `most_used_slots`.

  Returns:
    `{task: {'cluster', 'share', 'num_slots', 'chance', 'other_clusters_max_share',
    'shares': {cluster: share}}}`; tasks missing from `resembles` are skipped.
  """
  report = {}
  for task, counts in heldout_usage.items():
    if task not in resembles:
      continue
    cluster = resembles[task]
    if cluster not in cluster_usage:
      raise ValueError(f'held-out task {task!r} is said to resemble cluster '
                       f'{cluster!r}, which has no retrieval log; clusters: '
                       f'{sorted(cluster_usage)}.')
    shares = {c: share_in_top_slots(counts, u, mass)['share']
              for c, u in cluster_usage.items()}
    entry = dict(share_in_top_slots(counts, cluster_usage[cluster], mass))
    others = [s for c, s in shares.items() if c != cluster]
    entry.update(cluster=cluster, shares=shares,
                 other_clusters_max_share=max(others) if others else float('nan'))
    report[task] = entry
  return report


def plot_heatmap(matrix: Any, row_labels: Sequence[str],
                 col_labels: Optional[Sequence[str]], path: PathLike,
                 title: str = '', xlabel: str = '', ylabel: str = '',
                 colorbar_label: str = '', annotate: Optional[bool] = None,
                 vmin: Optional[float] = None, vmax: Optional[float] = None
                ) -> pathlib.Path:
  """Writes a heatmap PNG of `matrix` `[R, C]`.

  `col_labels=None` leaves the x axis numbered (e.g. M memory slots). Cells are
  annotated with their values when `annotate` (default: when R*C <= 200).
  """
  plt = plots.pyplot()

  matrix = np.asarray(matrix, dtype=np.float64)
  if matrix.ndim != 2 or matrix.shape[0] != len(row_labels):
    raise ValueError(f'plot_heatmap: matrix shape {matrix.shape} does not match '
                     f'{len(row_labels)} row labels.')
  rows, cols = matrix.shape
  if annotate is None:
    annotate = rows * cols <= 200 and col_labels is not None
  width = min(4 + 0.6 * cols, 16) if col_labels is not None else 10
  fig, ax = plt.subplots(figsize=(width, 1.5 + 0.4 * max(rows, 1)))
  image = ax.imshow(matrix, aspect='auto', cmap='viridis', vmin=vmin, vmax=vmax,
                    interpolation='nearest')
  ax.set_yticks(range(rows))
  ax.set_yticklabels(row_labels)
  if col_labels is not None:
    ax.set_xticks(range(cols))
    ax.set_xticklabels(col_labels, rotation=45, ha='right')
  if annotate:
    for i in range(rows):
      for j in range(cols):
        ax.text(j, i, f'{matrix[i, j]:.2f}', ha='center', va='center',
                color='w', fontsize=8)
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  fig.colorbar(image, ax=ax, label=colorbar_label)
  fig.tight_layout()
  return plots.save_figure(fig, path)


def plot_overlap_heatmap(heldout_usage: Mapping[str, Any],
                         cluster_usage: Mapping[str, Any], path: PathLike,
                         method: str = 'intersection') -> pathlib.Path:
  """Heatmap PNG of held-out tasks × training clusters slot-usage overlap."""
  rows, cols, matrix = overlap_matrix(heldout_usage, cluster_usage, method)
  return plot_heatmap(matrix, rows, cols, path,
                      title=f'Retrieval overlap ({method})',
                      xlabel='training cluster', ylabel='held-out task',
                      colorbar_label='overlap', vmin=0.0, vmax=1.0)


def summarize(train_indices: Any, train_labels: Sequence[str],
              eval_indices: Any, eval_labels: Sequence[str], memory_size: int,
              resembles: Optional[Mapping[str, str]] = None,
              method: str = 'intersection', mass: float = 0.5
             ) -> Dict[str, Any]:
  """All issue-8 statistics of one run, JSON-serialisable.

  Args:
    train_indices: `[N_train, k]` slot ids retrieved by training examples.
    train_labels: `[N_train]` training cluster of each example.
    eval_indices: `[N_eval, k]` slot ids retrieved by held-out examples.
    eval_labels: `[N_eval]` held-out task of each example.
    memory_size: M.
    resembles: `{held-out task: cluster}` for the resemblance share (optional).
    method: overlap method.
    mass: most-used-slots mass.

  Returns:
    `{'train': health, 'eval': health, 'overlap': {'method', 'rows', 'cols',
    'matrix'}, 'resemblance': {...}, 'mass': mass}`.
  """
  cluster_usage = usage_by_label(train_indices, train_labels, memory_size)
  heldout_usage = usage_by_label(eval_indices, eval_labels, memory_size)
  rows, cols, matrix = overlap_matrix(heldout_usage, cluster_usage, method)
  return {
      'memory_size': memory_size,
      'train': health(train_indices, memory_size),
      'eval': health(eval_indices, memory_size),
      'overlap': {'method': method, 'rows': rows, 'cols': cols,
                  'matrix': matrix.tolist()},
      'resemblance': resemblance_report(heldout_usage, cluster_usage,
                                        resembles or {}, mass),
      'mass': mass,
  }
