"""The docs site, built without Quarto by tools/docs.sh, as a reader sees it in a browser; README.md in step with nbs/index.ipynb.

Every page is opened in Debian's `chromium` at 1280 px and 390 px wide, driven by playwright (in the dev extra; it downloads
no browser of its own). On every page, at both widths: it renders (the screenshot is not blank), it shows no traceback, no
raw TeX and no local path, no table is cut off, every internal link and anchor resolves, and every image loads. Each
documented function also has an example under it.

Without chromium the browser checks skip, so `make test` runs on a fresh machine; under CI (`CI=true`) they fail instead,
and `.ci/run` installs chromium first. Set FASTERBN_SHOTS=DIR to keep a full-page screenshot of every page at both widths.
"""
import html, json, os, re, shutil, subprocess, sys
from pathlib import Path
from urllib.parse import unquote, urlsplit
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROWSER = next((shutil.which(b) for b in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(b)), None)
WIDTHS = {1280: 900, 390: 844}   # a laptop and a phone: width -> height of the window
PAGES = {'index', 'fold_math', 'graph', 'folder', 'callback', 'files', 'cli', 'demo', 'benchmark', 'deploy', 'contributing'}

def _env():
    return dict(os.environ, PATH=f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}', PYTHON=sys.executable)

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site into a temporary folder; README.md is left alone."
    if not (shutil.which('nbdev-proc-nbs', path=str(BIN)) and shutil.which('smalldocs', path=str(BIN))):
        pytest.skip('nbdev and smalldocs are not installed in this environment (pip install -e ".[dev]")')
    out = tmp_path_factory.mktemp('docs')/'site'
    p = subprocess.run(['bash', str(ROOT/'tools'/'docs.sh'), '--out', str(out), '--no-readme'], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return out

def test_pages(site):
    "Every notebook (and the contributing guide) has its page under its nbdev name."
    names = {p.stem for p in site.glob('*.html')}
    assert PAGES <= names, PAGES - names

def test_readme_in_sync(site, tmp_path):
    "README.md is what tools/readme.py writes from nbs/index.ipynb."
    p = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--out', str(tmp_path/'README.md')], cwd=ROOT, env=_env(),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), 'README.md is out of date with nbs/index.ipynb: run `make docs`'

def test_readme_front_door():
    "The README opens with the install lines, then the three ways in; its first example needs only the first install line."
    md = (ROOT/'README.md').read_text()
    install, use = md.index('## Install'), md.index('## Use it')
    assert install < use < md.index('## How it compares')
    assert 'pip install "fasterbn[vision]"' in md[install:use], 'the first install line must bring torchvision, which the example imports'
    for way in ['from fasterbn import BN_Folder', 'cbs=BNFoldCallback()', 'learn.fold_bn()', 'fasterbn fold resnet18 -o resnet18_folded.pt --verify --bench']:
        assert way in md[use:], way
    assert 'make demo' in md and 'make test' in md
    extras = set(re.findall(r'^(\w+) = \[', (ROOT/'pyproject.toml').read_text(), re.M))
    assert {'vision', 'fastai'} <= extras, 'pyproject.toml lost an extra the README names'

def test_contributing_in_sync(site):
    "The docs' contributing page is CONTRIBUTING.md."
    text = _text((site/'contributing.html').read_text())
    for heading in re.findall(r'^## (.+)$', (ROOT/'CONTRIBUTING.md').read_text(), re.M):
        assert html.unescape(heading.replace('`', '')) in text, heading

# ---------------------------------------------------------------- in the browser

# Runs in each page once it has loaded: what the checks below need, measured as the reader's browser lays it out.
PROBE = r"""async () => {
  for (const i of document.images) i.loading = 'eager';
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  const vw = document.documentElement.clientWidth;
  const strip = (sel) => { const c = document.body.cloneNode(true); c.querySelectorAll(sel).forEach(e => e.remove()); return c.textContent; };
  const scroller = (el) => { for (let e = el; e && e !== document.body; e = e.parentElement) {
    if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(e).overflowX)) return e; } return null; };
  const attrs = [...document.querySelectorAll('[href], [src]')].map(e => e.getAttribute('href') || e.getAttribute('src') || '')
    .filter(a => !a.startsWith('data:'));
  // documented functions (a doc block whose signature is a `def`) and the code cells after them, up to the next section
  const docs = [], open = [];
  for (const e of document.querySelectorAll('main h1, main h2, main pre.cell-code, main .cell-output-markdown :is(h3, h4)[id]')) {
    if (/^H[12]$/.test(e.tagName)) { open.length = 0; continue; }
    if (e.tagName === 'PRE') { for (const d of open) if (new RegExp('\\b' + d.name + '\\b').test(e.textContent)) d.example = true; continue; }
    const sig = e.nextElementSibling;
    if (!sig || !/^\s*(async\s+)?def\b/.test(sig.textContent)) continue;
    const name = e.textContent.trim().split('.').pop();
    if (/^[A-Z]/.test(name)) continue;   // a class: its methods are the functions to show
    const d = {title: e.textContent.trim(), name, example: false};
    docs.push(d); open.push(d);
  }
  return {
    vw, pageWidth: document.documentElement.scrollWidth,
    text: strip('script, style, template'),
    prose: strip('script, style, template, pre, code, .katex, .sourceCode'),
    math: [...document.querySelectorAll('.math')].map(e => !!e.querySelector('.katex') && !e.querySelector('.katex-error')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(e => e.name)),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    assets: [...document.querySelectorAll('link[rel=stylesheet][href], script[src], img[src]')].map(e => e.href || e.src)
      .filter(u => !u.startsWith('data:')),
    attrs, docs,
    images: [...document.images].map(i => { const r = i.getBoundingClientRect();
      return {src: i.getAttribute('src').slice(0, 80), ok: i.complete && i.naturalWidth > 0, right: r.right}; }),
    // a table, or the box it scrolls in: where it is, how much of it is hidden, and whether its first column stays in view
    tables: [...document.querySelectorAll('table')].map(t => { const s = scroller(t), c = t.querySelector('td, th');
      const own = !!s && (s === t || t.parentElement === s), r = (own ? s : t).getBoundingClientRect();
      return {head: (t.querySelector('tr') || t).textContent.trim().replace(/\s+/g, ' ').slice(0, 50), left: r.left, right: r.right,
              hidden: s ? s.scrollWidth - s.clientWidth : 0, ownBox: own, pinned: !!c && getComputedStyle(c).position === 'sticky'}; }),
  };
}"""

@pytest.fixture(scope='module')
def views(site):
    "Each page at each width: what PROBE measured, and a screenshot of the first screen. {(page, width): dict}"
    if BROWSER is None:
        if os.environ.get('CI'): pytest.fail('chromium is not installed: .ci/run installs it (apt-get install -y chromium)')
        pytest.skip('chromium is not installed (apt-get install -y chromium)')
    try: from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get('CI'): raise
        pytest.skip('playwright is not installed (pip install -e ".[dev]")')
    shots = Path(os.environ['FASTERBN_SHOTS']) if os.environ.get('FASTERBN_SHOTS') else None
    if shots: shots.mkdir(parents=True, exist_ok=True)
    res = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=BROWSER, args=['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                                                                    '--disable-component-update', '--disable-sync', '--no-first-run'])
        try:
            for w, h in WIDTHS.items():
                page = browser.new_page(viewport={'width': w, 'height': h})
                page.route(re.compile(r'^https?://'), lambda route: route.abort())   # offline, as a reader without a network
                for f in sorted(site.glob('*.html')):
                    page.goto(f.as_uri(), wait_until='load')
                    r = page.evaluate(PROBE)
                    r['shot'] = page.screenshot()
                    if shots: page.screenshot(path=str(shots/f'{f.stem}-{w}.png'), full_page=True)
                    res[f.stem, w] = r
                page.close()
        finally: browser.close()
    return res

def _fail(problems, what):
    assert not problems, f'{what}:\n' + '\n'.join(f'  {p}' for p in problems)

def test_pages_render(views):
    "Every page draws something: its screenshot is not one flat colour, and it has text."
    from PIL import Image
    import io
    bad = []
    for (page, w), r in views.items():
        im = Image.open(io.BytesIO(r['shot'])).convert('L')
        im = im.crop((0, 80, im.width, im.height))   # below the navigation bar
        top = max(im.getcolors(im.width * im.height))[0]   # pixels of the most common shade
        if top > .985 * im.width * im.height or len(r['text'].split()) < 30: bad.append(f'{page} @ {w}px looks blank')
    _fail(bad, 'blank pages')

TRACEBACK = re.compile(r'Traceback \(most recent call last\)|File "[^"]+", line \d+|\x1b\[|\[0;3\dm')

def test_no_traceback(views):
    "No page shows a traceback (or the colour codes of one)."
    _fail([f'{p} @ {w}px: ...{r["text"][max(0, m.start() - 80):m.end() + 80]!r}...' for (p, w), r in views.items()
           if (m := TRACEBACK.search(r['text']))], 'pages that show a traceback')

def test_no_raw_tex(views):
    "Every formula is rendered by KaTeX (vendored, so offline too), and no TeX is left in the prose."
    bad = [f'{p} @ {w}px: {r["math"].count(False)} formula(s) not rendered' for (p, w), r in views.items() if not all(r['math'])]
    bad += [f'{p} @ {w}px: ...{m.group(0)!r}...' for (p, w), r in views.items()
            if (m := re.search(r'.{0,40}(?:\$\$|\\\(|\\\[|\\[A-Za-z]{2,}\{?).{0,40}', r['prose']))]
    _fail(bad, 'raw TeX')

def _local_path(site):
    "A regex for the paths of this machine: the checkout, the site's folder, Python's installation, home and temp folders."
    roots = {str(ROOT), str(site), sys.prefix, sys.base_prefix, os.path.expanduser('~'), '/tmp/', '/var/folders/', 'site-packages'}
    roots = sorted((r for r in roots if len(r) > 4), key=len, reverse=True)
    return re.compile('|'.join(map(re.escape, roots)) + r'|/home/\w|/Users/\w|[A-Z]:\\\\(?:Users|Program)|file:/')

def test_no_local_paths(views, site):
    "No page shows or links a path of the machine that built it."
    pat = _local_path(site)
    bad = []
    for (p, w), r in views.items():
        if w != 1280: continue   # the same text at both widths
        if m := pat.search(r['text']): bad.append(f'{p}: ...{r["text"][max(0, m.start() - 60):m.end() + 60]!r}...')
        bad += [f'{p}: links {a!r}' for a in r['attrs'] if pat.search(a)]
    _fail(bad, 'local paths in pages')

def test_links_and_anchors(views, site):
    "Every link, stylesheet, script and image inside the site exists, and every #anchor is on its page."
    ids = {p: set(r['ids']) for (p, w), r in views.items() if w == 1280}
    bad = []
    for (p, w), r in views.items():
        if w != 1280: continue
        for url in set(r['links'] + r['assets']):
            u = urlsplit(url)
            if u.scheme in ('http', 'https', 'mailto', 'javascript'): continue
            target = Path(unquote(u.path))
            if u.scheme != 'file' or not target.is_relative_to(site): bad.append(f'{p}: {url} leaves the site'); continue
            if target.is_dir(): target = target/'index.html'
            if not target.exists(): bad.append(f'{p}: {target.relative_to(site)} does not exist'); continue
            if u.fragment and target.suffix == '.html' and unquote(u.fragment) not in ids.get(target.stem, ()):
                bad.append(f'{p}: no #{u.fragment} on {target.name}')
    _fail(sorted(set(bad)), 'broken links')

def test_images_load(views):
    "Every image loads and fits the window."
    _fail([f'{p} @ {w}px: {i["src"]} ' + ('did not load' if not i['ok'] else f'ends at {i["right"]:.0f}px')
           for (p, w), r in views.items() for i in r['images'] if not i['ok'] or i['right'] > r['vw'] + 1], 'images')

def test_nothing_off_screen(views):
    """The page never scrolls sideways; at 1280 px every table fits whole. On a phone (390 px) a table too wide for the
    screen scrolls in its own box, with its first column pinned, so that every cell can be reached and named."""
    bad = [f'{p} @ {w}px: the page is {r["pageWidth"]}px wide' for (p, w), r in views.items() if r['pageWidth'] > r['vw'] + 1]
    for (p, w), r in views.items():
        for t in r['tables']:
            if t['left'] < -1 or t['right'] > r['vw'] + 1: bad.append(f'{p} @ {w}px: table "{t["head"]}" is off the screen')
            elif t['hidden'] > 1 and (w >= 1000 or not (t['ownBox'] and t['pinned'])):
                bad.append(f'{p} @ {w}px: table "{t["head"]}" hides {t["hidden"]:.0f}px of its columns')
    _fail(bad, 'content off the screen')

def test_functions_have_examples(views):
    "Every documented function or method has an example (a code cell that calls it) under it, in the same section."
    _fail([f'{p}: {d["title"]}' for (p, w), r in views.items() if w == 1280 for d in r['docs'] if not d['example']],
          'functions without an example')

def _text(dom: str) -> str:
    dom = re.sub(r'<(script|style)\b.*?</\1>', ' ', dom, flags=re.S)
    return html.unescape(re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', '', dom)))

def test_index_shows_example(views):
    "The home page's first example, with its saved output."
    text = views['index', 1280]['text']
    assert 'Fold BatchNorm into neighbouring Conv and Linear layers' in text and 'pip install "fasterbn[vision]"' in text
    for line in ['from fasterbn import BN_Folder', 'folded = folder.fold(model)', 'fold_error(model, folded', 'cbs=BNFoldCallback()']:
        assert line in text, line
    assert re.search(r'BN layers folded: \d+, not folded: \d+ \| error [\d.e+-]+ vs [\d.e+-]+', text), "the example's saved output is missing"

def test_index_shows_comparison_table(site):
    "The home page shows the benchmark's summary table (and its plot) once `make bench` has run."
    dom = (site/'index.html').read_text()
    if not (ROOT/'bench'/'results.md').exists():
        assert 'The comparison table appears here once' in dom
        pytest.skip('bench/results.md not written yet (make bench); the page shows the placeholder')
    assert 'The comparison table appears here once' not in dom, 'run `nbdev-test --save nbs/index.ipynb` after `make bench`, then `make docs`'
    table = next((t for t in re.findall(r'<table\b.*?</table>', dom, flags=re.S) if 'fuse_fx' in t or 'fasterbn' in t), None)
    assert table is not None and table.count('<tr') >= 3, 'no comparison table on the home page'
    if (ROOT/'nbs'/'images'/'benchmark.png').exists(): assert 'images/benchmark.png' in dom
