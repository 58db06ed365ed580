#!/usr/bin/env python
"""`nbdev-proc-nbs`, with three changes for the site that tools/docs.sh builds:

    python tools/proc_nbs.py        # what tools/docs.sh runs: nbs/ -> _proc/

1. **Doc blocks where the notebook puts them, in source order.** nbdev 3.3's `add_show_docs` (nbdev/processors.py) adds a `show_doc` cell after each exported
   cell for every name it defines, but inserts each one at the same index (`cell.idx_+1`), so a cell defining `to_canonical`
   then `from_canonical` gets the doc blocks of `from_canonical` first. Each run of inserted `show_doc` cells is put back in
   source order. A notebook can place a doc block itself with an explicit `show_doc` call, which nbdev honours except for
   methods added with `@patch` (it compares `fold_bn` with `Learner.fold_bn`, and adds a second block): that is fixed too.
2. **Parameters as a table.** nbdev 3 renders a signature as one code block with each parameter's docment as a `# comment`,
   which runs far past the text column and hides behind a horizontal scroll. As fastcore's and fastai's pages do, the doc
   block here shows the signature without the comments (wrapped by the site's CSS, `.sd-sig`), then the docstring, then a
   table of the parameters (name, type, default, what it is) that wraps like text (`.sd-params`).
3. **Tutorials near the top.** nbdev's sidebar lists the notebooks of `nbs/tutorials/` last, as a section named after the
   folder; here the section comes right after the home page, titled "Tutorials".

It also prints nbdev's warning about a cell that mixes imports with other code (which makes the docs build run that cell) as
one line naming the notebook and the fix, instead of a dump of the cell's source. The notebooks are processed in this process
(`n_workers=0`): nbdev's workers are spawned and would not see these changes.
"""
import html, inspect, json, re, sys, warnings
from pathlib import Path
import yaml
import nbdev.processors, nbdev.quarto, nbdev.showdoc
from fastcore.docments import DocmentText

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

_nbdev_def_names = nbdev.processors._def_names

def _def_names_not_shown(cell, shown):
    "nbdev's `_def_names`, less the `@patch`ed methods a notebook documents itself: nbdev compares `fold_bn` with `Learner.fold_bn`."
    return [n for n in _nbdev_def_names(cell, shown) if n not in shown]

nbdev.processors._def_names = _def_names_not_shown

# ---- 2. parameters as a table

def _type(anno) -> str:
    "An annotation as written: `bool`, `torch.Tensor | tuple | None`."
    if anno is inspect.Parameter.empty: return ''
    if isinstance(anno, str): return anno
    if isinstance(anno, type): return anno.__qualname__ if anno.__module__ == 'builtins' else f'{anno.__module__.split(".")[0]}.{anno.__qualname__}'
    return inspect.formatannotation(anno).removeprefix('typing.')

def _default(v) -> str:
    if v is inspect.Parameter.empty: return ''
    return v.__name__ if hasattr(v, '__name__') else repr(v)

def _cell(s: str) -> str: return s.replace('|', '\\|').replace('\n', '<br>')

def _code(s: str) -> str:
    "Code in a table cell, as HTML: nbdev links backticked names to their docs, and a private name has none."
    return f'<code>{html.escape(s).replace("|", "&#124;")}</code>' if s else ''

def _signature(r, prefix: str) -> str:
    "The signature without docments, one parameter after another; the site's CSS wraps it at the column's width."
    params = ', '.join(fmt for fmt, _ in r.dm.params)
    ret = _type(r.dm.dm.get('return', {}).get('anno', inspect.Parameter.empty))
    return f'{prefix} {r.nm.split(".")[-1]}({params})' + (f' -> {ret}' if ret and ret != 'None' else '')

def _params_table(dm: dict) -> str:
    "Name, type, default and docment of each parameter, and what it returns: a table that wraps."
    rows = [f'| {_code(("*" if v.get("kind") == inspect.Parameter.VAR_POSITIONAL else "**" if v.get("kind") == inspect.Parameter.VAR_KEYWORD else "") + k)} '
            f'| {_code(_type(v.get("anno", inspect.Parameter.empty)))} | {_code(_default(v.get("default", inspect.Parameter.empty)))} '
            f'| {_cell(v.get("docment") or "")} |' for k, v in dm.items() if k != 'return']
    ret = dm.get('return', {})
    if ret.get('docment'): rows.append(f'| **returns** | {_code(_type(ret.get("anno", inspect.Parameter.empty)))} | | {_cell(ret["docment"])} |')
    if not any(v.get('docment') for v in dm.values()): return ''
    return '\n'.join(['|  | type | default | details |', '|---|---|---|---|', *rows])

def _doc_markdown(self) -> str:
    "nbdev's doc block (source link, heading), then the short signature, the docstring and the parameter table."
    if not isinstance(getattr(self, 'dm', None), DocmentText): return _nbdev_markdown(self)   # docments unavailable: nbdev's own
    doc = '---\n\n'
    src = nbdev.showdoc.NbdevLookup().code(self.fn)
    if src: doc += nbdev.showdoc._ext_link(src, 'source', 'style="float:right; font-size:smaller"') + '\n\n'
    doc += f'{"#" * self.title_level} {self.nm}\n\n'
    prefix = 'class' if inspect.isclass(self.sym) else 'async def' if inspect.iscoroutinefunction(self.sym) else 'def'
    doc += f'::: {{.sd-sig}}\n```python\n{_signature(self, prefix)}\n```\n:::\n'
    if self.docs: doc += '\n' + re.sub(r'^(\s*)(.+)', r'\1*\2*', self.docs, count=1) + '\n'
    if table := _params_table(self.dm.dm): doc += f'\n::: {{.sd-params}}\n{table}\n:::\n'
    return doc

_nbdev_markdown = nbdev.showdoc.BasicMarkdownRenderer._repr_markdown_
nbdev.showdoc.BasicMarkdownRenderer._repr_markdown_ = _doc_markdown

# ---- 3. tutorials near the top

def _tutorials_first(sidebar: Path):
    "Move the `tutorials` section of nbdev's sidebar right after the home page, titled 'Tutorials'."
    if not sidebar.exists(): return
    cfg = yaml.safe_load(sidebar.read_text())
    items = cfg['website']['sidebar']['contents']
    sec = next((i for i in items if isinstance(i, dict) and i.get('section') == 'tutorials'), None)
    if sec is None: return
    items.remove(sec)
    sec['section'] = 'Tutorials'
    items.insert(1 if items and str(items[0]).startswith('index.') else 0, sec)
    sidebar.write_text(yaml.dump(cfg, sort_keys=False))

# ---- nbdev's warnings, one line each

def _report(caught, nbs: Path):
    "Print each warning on one line; nbdev's 'imports and other code' one names the notebook and says what to do."
    sources = {}
    for nb in nbs.rglob('*.ipynb'):
        for c in json.loads(nb.read_text())['cells']: sources.setdefault(''.join(c['source']).strip(), nb)
    for w in caught:
        msg = str(w.message)
        if msg.startswith('Found cells containing imports and other code'):
            src = msg.split('\n---\n', 1)[1].rsplit('\n---\n', 1)[0].strip() if '\n---\n' in msg else ''
            nb = sources.get(src)
            first = next((l for l in src.splitlines() if not l.startswith('#|')), '')
            print(f'docs: warning: {nb.relative_to(nbs.parent) if nb else "a notebook"}: a cell mixes imports with other code, so the docs '
                  f'build runs all of it; put its imports in a cell of their own (the cell starting {first[:60]!r})', file=sys.stderr)
        else: print(f'docs: warning: {w.category.__name__}: {msg.strip().splitlines()[0] if msg.strip() else ""}', file=sys.stderr)

if __name__ == '__main__':
    from nbdev.config import get_config
    cfg = get_config()
    proc = cfg.config_path/'_proc'
    # _proc/ is a cache: notebooks processed before a change to this script must be processed again
    stale = not proc.exists() or proc.stat().st_mtime < Path(__file__).stat().st_mtime
    with warnings.catch_warnings(record=True) as caught:   # the filters as they are: each message once
        nbdev.quarto.nbdev_proc_nbs.__wrapped__(n_workers=0, force=stale, file_glob='', file_re=r'\.(?:ipynb|qmd|html)$')
    _tutorials_first(proc/'sidebar.yml')
    _report(caught, cfg.nbs_path)
