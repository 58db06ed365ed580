#!/usr/bin/env bash
# Builds the docs site into _docs/ and README.md without Quarto (which cannot be installed offline), from the same notebooks:
#   nbdev-proc-nbs   nbdev's own processing (show_doc, links, directives) of nbs/ into _proc/, as `nbdev-docs` does,
#                    through tools/proc_nbs.py, which keeps the doc blocks of one cell in source order, shows parameters
#                    as a table, and lists the tutorials right after the home page
#   smalldocs        renders that Quarto project into HTML, offline (pure Python, pinned in the dev extra)
#   then             pages get their nbdev names (00_folder.html -> folder.html, as Quarto's `output-file` would),
#                    links to the published site become relative so the site reads offline, KaTeX comes from
#                    tools/katex/ instead of a CDN (maths renders offline), the theme's Google Fonts import is
#                    dropped (the site asks nothing of the network; the system's sans-serif font stands in), and
#                    README.md is written from the processed index notebook.
# On a machine with Quarto, `nbdev-docs` builds the published site from the same notebooks, unchanged.
# Usage: tools/docs.sh [--out DIR] [--no-readme]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=_docs; README=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2;;
    --no-readme) README=0; shift;;
    *) echo "usage: tools/docs.sh [--out DIR] [--no-readme]" >&2; exit 2;;
  esac
done
PY="${PYTHON:-python}"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
# Without Quarto on PATH, nbdev-proc-nbs tries to install it (curl + sudo dpkg) before processing, which it does not need.
# A stub `quarto` for this one call stops that: nothing here runs Quarto.
PROC_PATH="$PATH"
if ! command -v quarto >/dev/null 2>&1; then
  printf '#!/bin/sh\necho "quarto is not installed (stub from tools/docs.sh)" >&2; exit 1\n' > "$TMP/quarto"; chmod +x "$TMP/quarto"
  PROC_PATH="$TMP:$PATH"
fi
PATH="$PROC_PATH" "$PY" tools/proc_nbs.py
rm -rf _proc/_docs
LOG="$TMP/smalldocs.log"
smalldocs render _proc >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
"$PY" - "$OUT" "$LOG" <<'PY'
"Give pages their nbdev names and make links to the published site relative."
import json, re, shutil, sys
from pathlib import Path
from nbdev.config import get_config
cfg, proc, out = get_config(), Path('_proc'), Path(sys.argv[1])
site = proc/'_docs'
renames = {}   # '00_folder.html' -> 'folder.html', relative to the site root
for nb in proc.rglob('*.ipynb'):
    if '_docs' in nb.parts: continue
    cells = json.loads(nb.read_text())['cells']
    m = re.search(r'^output-file:\s*(\S+)', ''.join(cells[0]['source']), re.M) if cells and cells[0]['cell_type'] == 'raw' else None
    rel = nb.relative_to(proc).with_suffix('.html')
    if m and m.group(1) != rel.name: renames[rel.as_posix()] = (rel.parent/m.group(1)).as_posix()
for old, new in renames.items():
    if (site/old).exists(): (site/old).rename(site/new)
host = (cfg.doc_host + cfg.doc_baseurl).rstrip('/') + '/'
def fix(text, depth):
    up = '../' * depth
    text = text.replace(f'href="{host}', f'href="{up}')   # auto-links to the published pages, and the home link
    text = re.sub(r'https://cdn\.jsdelivr\.net/npm/katex@[\w.-]+/dist', up + 'site_libs/katex', text)   # vendored KaTeX
    for old, new in renames.items():
        text = re.sub(r'(href="(?:\.\./)*|"href":\s*"|<loc>[^<]*/)' + re.escape(old) + r'(?=[#"<])', lambda m: m.group(1) + new, text)
    return text
def polish(html):
    """Short cells of right-aligned (number) columns are marked `sd-num`, so that `3.1e-07` never breaks at its minus; figures
    link to the image at full size (they fit the text column: see styles.css)."""
    html = re.sub(r'<td style="text-align: ?right;?">(?=[^<\s]{1,16}</td>)', '<td style="text-align:right" class="sd-num">', html)
    return re.sub(r'<img\b[^>]*\bsrc="(?!data:)([^"]+)"[^>]*\bclass="[^"]*figure-img[^"]*"[^>]*>',
                  lambda m: f'<a class="sd-zoom" href="{m.group(1)}" title="open at full size">{m.group(0)}</a>', html)
shutil.copytree('tools/katex', site/'site_libs'/'katex', ignore=shutil.ignore_patterns('README.md'))
for f in site.rglob('*.css'):   # the theme's web fonts: a request that fails offline
    text = f.read_text()
    if 'fonts.googleapis.com' in text: f.write_text(re.sub(r'@import\s+url\([\'"]?https://fonts\.googleapis\.com/[^)]*\);?', '', text))
for f in site.rglob('*'):
    if f.suffix in ('.html', '.json', '.xml'):
        text = fix(f.read_text(), len(f.relative_to(site).parts) - 1)
        f.write_text(polish(text) if f.suffix == ".html" else text)
# smalldocs' warnings, less those about what Quarto-only keys do and links that the renames above resolved
skip = ('output-file is not read', 'format commonmark is not built', 'keep-md is ignored', 'unknown key format-links')
for line in Path(sys.argv[2]).read_text().splitlines():
    m = re.search(r'(\S+): broken link (\S+)$', line)   # the link is relative to its page's folder
    if any(k in line for k in skip) or (m and (site/Path(m.group(1)).parent/m.group(2).split('#')[0]).resolve().exists()): continue
    print(line)
if out.exists(): shutil.rmtree(out)
shutil.move(str(site), str(out))
print(f'site: {out}/index.html ({sum(1 for _ in out.rglob("*.html"))} pages)')
PY
if [ "$README" = 1 ]; then "$PY" tools/readme.py; fi
