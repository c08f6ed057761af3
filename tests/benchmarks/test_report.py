"""Every benchmark saves its figures the same way: JSON and Markdown side by side, written atomically."""

from __future__ import annotations

import json

import pytest

from signstream.benchmarks.report import quick_cli, save_report


def test_save_report_writes_json_and_markdown_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "results" / "nested"
    result = {"fps": 12.5, "rows": [1, 2]}
    assert save_report(out, "demo", result, lambda r: f"## demo\n{r['fps']} frames/s\n") is result
    assert json.loads((out / "demo.json").read_text()) == result
    assert (out / "demo.md").read_text() == "## demo\n12.5 frames/s\n"
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "demo.md"]


def test_a_report_that_cannot_be_rendered_writes_neither_file(tmp_path):
    def broken(_):
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError):
        save_report(tmp_path, "demo", {"fps": 1.0}, broken)
    assert list(tmp_path.iterdir()) == []


def test_quick_cli_passes_out_and_quick_to_the_run_and_prints_its_markdown(tmp_path, capsys):
    seen = {}

    def run(out, quick=False):
        seen.update(out=out, quick=quick)
        return {"x": 3}

    quick_cli("Demo benchmark.\n\nMore.", run, lambda r: f"x is {r['x']}", ["--out", str(tmp_path), "--quick"])
    assert seen == {"out": str(tmp_path), "quick": True}
    assert capsys.readouterr().out.strip() == "x is 3"
