"Runs every notebook in `nbs/` as one pytest test, the way `nbdev-test` does (cells flagged `slow`/`cuda` skipped)."
import os, pytest
from nbdev.config import get_config
from nbdev.test import test_nb as _run_nb   # renamed: pytest would collect a module-level `test_nb`

_cfg = get_config()
_skip = _cfg.tst_flags.split() if isinstance(_cfg.tst_flags, str) else list(_cfg.tst_flags)
_nbs = sorted(p for p in _cfg.nbs_path.rglob('*.ipynb')
              if not any(part.startswith(('_', '.')) for part in p.relative_to(_cfg.nbs_path).parts))

@pytest.mark.notebook
@pytest.mark.parametrize('nb', _nbs, ids=lambda p: str(p.relative_to(_cfg.nbs_path)))
def test_notebook(nb):
    ok, _ = _run_nb(nb, skip_flags=_skip, force_flags=os.environ.get('NBDEV_FLAGS', '').split(), basepath=_cfg.config_path)
    assert ok, f'{nb.name} failed: run `nbdev-test {nb}` to see the cell'
