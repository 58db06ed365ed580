"""The docs site, built without Quarto by tools/docs.sh, and its home page as a browser shows it; README.md in step with nbs/index.ipynb.

The browser checks need Debian's `chromium` (`apt-get install -y chromium`) and skip without it, so `make test` runs on a fresh machine.
Set FASTERBN_SHOTS=DIR to keep the screenshots.
"""
import html, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BROWSER = next((b for b in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(b)), None)
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run', '--hide-scrollbars']
needs_browser = pytest.mark.skipif(BROWSER is None, reason='chromium is not installed (apt-get install -y chromium)')

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
    "Every notebook has its page under its nbdev name, and relative links between pages resolve."
    names = {p.name for p in site.glob('*.html')}
    assert {'index.html', 'fold_math.html', 'graph.html', 'folder.html', 'cli.html'} <= names, names
    broken = [(f.name, h) for f in site.glob('*.html')
              for h in re.findall(r'href="([\w./-]+\.html)(?:#[^"]*)?"', f.read_text()) if not (f.parent/h).exists()]
    assert not broken, broken

def test_readme_in_sync(site, tmp_path):
    "README.md is what tools/readme.py writes from nbs/index.ipynb."
    p = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--out', str(tmp_path/'README.md')], cwd=ROOT, env=_env(),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path/'README.md').read_text() == (ROOT/'README.md').read_text(), 'README.md is out of date with nbs/index.ipynb: run `make docs`'

def _browser(*args) -> str:
    p = subprocess.run([BROWSER, *FLAGS, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout

def _text(dom: str) -> str:
    dom = re.sub(r'<(script|style)\b.*?</\1>', ' ', dom, flags=re.S)
    return html.unescape(re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', '', dom)))

@pytest.fixture(scope='module')
def index_dom(site):
    if BROWSER is None: pytest.skip('chromium is not installed (apt-get install -y chromium)')
    return _browser('--dump-dom', (site/'index.html').as_uri())

@needs_browser
def test_index_shows_example(index_dom):
    text = _text(index_dom)
    assert 'fasterbn' in text and 'Fold BatchNorm into neighbouring Conv and Linear layers' in text
    assert 'pip install fasterbn' in text
    for line in ['from fasterbn.folder import BN_Folder', 'folded = folder.fold(model)', 'fold_error(model, folded']:
        assert line in text, line
    assert re.search(r'BN layers folded: \d+, not folded: \d+ \| error [\d.e+-]+ vs [\d.e+-]+', text), 'the example\'s saved output is missing'

@needs_browser
def test_index_shows_comparison_table(index_dom):
    text = _text(index_dom)
    if not (ROOT/'bench'/'results.md').exists():
        assert 'The comparison table appears here once' in text
        pytest.skip('bench/results.md not written yet (make bench); the page shows the placeholder')
    assert 'The comparison table appears here once' not in text, 'run `nbdev-test --save nbs/index.ipynb` after `make bench`, then `make docs`'
    tables = re.findall(r'<table\b.*?</table>', index_dom, flags=re.S)
    table = next((t for t in tables if 'fuse_fx' in t or 'fasterbn' in t), None)
    assert table is not None, 'no comparison table on the home page'
    assert table.count('<tr') >= 3
    if (ROOT/'nbs'/'images'/'benchmark.png').exists(): assert 'images/benchmark.png' in index_dom

@needs_browser
def test_index_screenshot(site, tmp_path):
    shot = Path(os.environ.get('FASTERBN_SHOTS') or tmp_path)/'index.png'
    shot.parent.mkdir(parents=True, exist_ok=True)
    _browser('--window-size=1280,2000', f'--screenshot={shot}', (site/'index.html').as_uri())
    data = shot.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and int.from_bytes(data[16:20], 'big') == 1280
    assert len(data) > 50_000, 'the screenshot looks blank'
