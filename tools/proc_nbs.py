#!/usr/bin/env python
"""`nbdev-proc-nbs`, with the doc blocks of a cell that defines several functions in source order.

    python tools/proc_nbs.py        # what tools/docs.sh runs: nbs/ -> _proc/

nbdev 3.3's `add_show_docs` (nbdev/processors.py) adds a `show_doc` cell after each exported cell for every name it
defines, but inserts each one at the same index (`cell.idx_+1`), so a cell defining `to_canonical` then `from_canonical`
gets the doc blocks of `from_canonical` first. This script runs nbdev's own processing unchanged, then puts each run of
inserted `show_doc` cells back in source order. It processes the notebooks in this process (`n_workers=0`): nbdev's
workers are spawned and would not see the fix. A notebook can also pin the order itself with explicit `show_doc` calls.
"""
from pathlib import Path
import nbdev.processors, nbdev.quarto

_nbdev_begin = nbdev.processors.add_show_docs.begin

def _begin_in_source_order(self):
    "nbdev's `add_show_docs.begin`, then each run of inserted `show_doc` cells reversed (they come from one exported cell)."
    _nbdev_begin(self)
    cells, i = self.nb.cells, 0
    while i < len(cells):
        j = i
        while j < len(cells) and getattr(cells[j], 'has_sd', False): j += 1
        if j - i > 1: cells[i:j] = list(reversed(cells[i:j]))
        i = max(i + 1, j)

nbdev.processors.add_show_docs.begin = _begin_in_source_order

if __name__ == '__main__':
    from nbdev.config import get_config
    proc = get_config().config_path/'_proc'
    # _proc/ is a cache: notebooks processed before this fix (or before an edit to it) must be processed again
    stale = not proc.exists() or proc.stat().st_mtime < Path(__file__).stat().st_mtime
    nbdev.quarto.nbdev_proc_nbs.__wrapped__(n_workers=0, force=stale, file_glob='', file_re=r'\.(?:ipynb|qmd|html)$')
