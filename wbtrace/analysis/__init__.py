"""Analyses of the entropy papers over a trace store, as Polars queries returning Polars frames.

One module per question, each a thin query over `frames` (the lazy scans of the step files):

- `forks`: forking tokens, their fork share, trend and word lists (arXiv 2506.01939)
- `covariance`: token-level Cov(log-prob, advantage), Clip-Cov / KL-Cov selections, R = -a exp(H) + b (2505.22617)
- `positions`: step x relative-position heatmap, end-of-sequence share (2508.02260)
- `groups`: prompt groups, zero-spread, pass@k, DAPO's all-correct / all-wrong shares
- `compare`: two runs side by side, fork overlap, the same prompt in both runs or across steps

The CLI (``wbtrace forks/cov/positions/groups/compare``), the viewer and the W&B charts are faces over these.
"""

from wbtrace.analysis.frames import Where

__all__ = ["Where"]
