"""bench.report re-renders the committed results/ from their saved data: every table, CSV and page byte for byte
(the plots are left out: their bytes depend on the matplotlib build)."""

import shutil
from pathlib import Path

import pytest

from bench import report

RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.skipif(not (RESULTS / "raw").is_dir(), reason="no committed sweep data")
def test_committed_results_rerender_byte_for_byte(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(RESULTS, out)
    written = report.render(out)
    text = [p for p in written if p.suffix in (".md", ".csv")]
    assert text
    for path in text:
        rel = path.relative_to(out)
        assert path.read_bytes() == (RESULTS / rel).read_bytes(), f"{rel} differs from the committed file"
