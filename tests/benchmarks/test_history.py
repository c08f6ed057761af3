"""Benchmark history: appended lines survive interruption, and compare flags only real regressions on one machine."""

from __future__ import annotations

import json
import types

import pytest

from signstream import SignstreamError
from signstream.benchmarks import history, run_all
from signstream.tools import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def loaders_result(fps: float, rounds=(1.0, 1.0)) -> dict:
    """A loaders.json of the real shape: one loader row with two rounds, a bare row, a summary."""
    row = {"name": "pyav vp9", "kind": "loader", "fps": fps, "cpu_ms_per_frame": 1000 / fps, "peak_pss_mib": 900.0}
    row["rounds"] = [{"fps": fps * r, "cpu_ms_per_frame": 1000 / (fps * r)} for r in rounds]
    bare = {"name": "bare pyav vp9", "kind": "bare", "fps": 9000.0, "rounds": []}
    return {"rows": [row, bare], "summary": {"pyav_vs_pngdir": fps / 1000}}


def entry(run: str, fps: float, machine_id: str = "m1", rounds=None, commit: str = "aaaa", quick=False) -> dict:
    fig = {"value": fps, "better": "higher", **({"rounds": list(rounds)} if rounds else {})}
    return {
        "run": run,
        "date": "2030-01-01T00:00:00Z",
        "commit": commit,
        "dirty": False,
        "quick": quick,
        "machine": {"id": machine_id},
        "benchmark": "loaders",
        "figures": {"pyav vp9 fps": fig, "pyav vp9 peak_pss_mib": {"value": 900.0, "better": "lower"}},
    }


def write_history(path, entries) -> str:
    for e in entries:
        history.append(path, e)
    return str(path)


def test_record_then_read_round_trips_the_headline_figures_with_their_keys(tmp_path):
    (tmp_path / "loaders.json").write_text(json.dumps(loaders_result(5000.0, rounds=(0.9, 1.0))))
    (tmp_path / "threads.json").write_text(
        json.dumps({"fps_before": 50.0, "runs": {"before": [{"frames_per_s": 40.0}, {"frames_per_s": 60.0}]}})
    )
    path = tmp_path / "history.jsonl"
    with pytest.warns(UserWarning, match=r"pack\.json: not recorded in the history"):
        assert history.record(tmp_path, ["loaders", "threads", "pack"], path, quick=True) == 2
    entries = history.read(path)
    assert [e["benchmark"] for e in entries] == ["loaders", "threads"]
    assert entries[0]["run"] == entries[1]["run"] and entries[0]["quick"] is True
    assert entries[0]["date"].endswith("Z") and entries[0]["machine"] == history.machine()
    assert entries[0]["commit"] == "unknown" or len(entries[0]["commit"]) == 40
    figs = entries[0]["figures"]
    assert figs["pyav vp9 fps"] == {"value": 5000.0, "better": "higher", "rounds": [4500.0, 5000.0]}
    assert figs["pyav vp9 peak_pss_mib"] == {"value": 900.0, "better": "lower"}
    assert figs["pyav_vs_pngdir"]["value"] == 5.0
    assert not any(name.startswith("bare") for name in figs)  # baselines are denominators, not headlines
    assert entries[1]["figures"]["fps_before"]["rounds"] == [40.0, 60.0]
    assert path.read_text().count("\n") == 2


def test_every_committed_result_gives_headline_figures():
    results = history.REPO / "benchmarks" / "results"
    for name in run_all.BENCHMARKS:
        if (results / f"{name}.json").exists():
            figs = history.figures(name, json.loads((results / f"{name}.json").read_text()))
            assert figs, name
            assert all(f["better"] in ("higher", "lower") for f in figs.values()), name


def test_commit_outside_git_is_unknown(tmp_path):
    assert history.commit(tmp_path) == {"commit": "unknown", "dirty": None}


def test_the_machine_fingerprint_is_stable_across_calls():
    first, second = history.machine(), history.machine()
    assert first == second
    assert len(first["id"]) == 12 and int(first["id"], 16) >= 0
    assert {"cpu", "cores", "memory_gib", "gpu", "torch", "dali"} <= set(first)


def test_a_30_percent_slowdown_is_flagged_as_a_regression():
    found = history.pairs([entry("r1", 1000.0, rounds=[990, 1000]), entry("r2", 700.0, rounds=[690, 700])], "m1")
    rows = history.compare(*found[0])
    fps = next(r for r in rows if r["figure"] == "pyav vp9 fps")
    assert fps["verdict"] == "regressed" and fps["change"] == pytest.approx(-0.3)
    text, regressed = history.report(found)
    assert regressed == 1 and "REGRESSED" in text


def test_a_change_inside_the_noise_band_is_not_flagged():
    # rounds 20 % apart: a 10 % drop is noise, though it is twice the 5 % floor
    found = history.pairs([entry("r1", 1000.0, rounds=[800, 1000]), entry("r2", 900.0, rounds=[900, 880])], "m1")
    fps = next(r for r in history.compare(*found[0]) if r["figure"] == "pyav vp9 fps")
    assert fps["verdict"] == "within noise" and fps["band"] == pytest.approx(200 / 900)
    # without rounds the floor decides: 3 % is noise, 8 % is not
    assert history.judge({"value": 100.0}, {"value": 97.0, "better": "higher"})["verdict"] == "within noise"
    assert history.judge({"value": 100.0}, {"value": 92.0, "better": "higher"})["verdict"] == "regressed"
    assert history.judge({"value": 100.0}, {"value": 92.0, "better": "lower"})["verdict"] == "improved"


def test_runs_on_different_machines_are_never_compared():
    entries = [entry("r1", 1000.0, machine_id="gpu-box"), entry("r2", 500.0, machine_id="cpu-box")]
    with pytest.raises(SignstreamError, match="no earlier benchmark run on machine cpu-box"):
        history.pairs(entries, "cpu-box")
    entries.append(entry("r3", 990.0, machine_id="gpu-box"))
    (new, old), *_ = history.pairs(entries, "gpu-box")
    assert (new["run"], old["run"]) == ("r3", "r1")


def test_quick_runs_are_compared_with_quick_runs_and_baseline_picks_a_commit():
    entries = [
        entry("r1", 1000.0, commit="abc123"),
        entry("r2", 10.0, quick=True),
        entry("r3", 600.0, commit="def456"),
        entry("r4", 990.0, commit="fff000"),
    ]
    (new, old), *_ = history.pairs(entries, "m1")
    assert (new["run"], old["run"]) == ("r4", "r3")
    (new, old), *_ = history.pairs(entries, "m1", baseline="abc")
    assert (new["run"], old["run"]) == ("r4", "r1")
    with pytest.raises(SignstreamError, match="of commit 999"):
        history.pairs(entries, "m1", baseline="999")


def test_the_plot_is_a_png_with_one_panel_per_figure(tmp_path):
    entries = [entry("r1", 1000.0, rounds=[990, 1000]), entry("r2", 700.0), entry("r3", 5.0, machine_id="other")]
    out = history.plot(entries, tmp_path / "history.png", "m1")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.png"]  # no temporary left behind


def test_a_truncated_last_line_is_skipped_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "history.jsonl"
    write_history(path, [entry("r1", 1000.0), entry("r2", 900.0)])
    with open(path, "a") as f:
        f.write(json.dumps(entry("r3", 800.0))[:40])  # a run killed mid-line (not by append)
    with pytest.warns(UserWarning, match=r"history\.jsonl:3: malformed"):
        assert [e["run"] for e in history.read(path)] == ["r1", "r2"]
    history.append(path, entry("r4", 700.0))  # starts on a line of its own, not glued to the cut one
    with pytest.warns(UserWarning, match=r":3: malformed"):
        assert [e["run"] for e in history.read(path)] == ["r1", "r2", "r4"]


def test_bench_compare_exit_codes(tmp_path, capsys):
    def compare(*entries, extra=()):
        path = tmp_path / f"h{len(list(tmp_path.iterdir()))}.jsonl"
        code = cli.main(["bench", "compare", "--history", write_history(path, entries), "--machine", "m1", *extra])
        return code, capsys.readouterr()

    code, out = compare(entry("r1", 1000.0), entry("r2", 700.0))
    assert code == 1 and "REGRESSED" in out.out
    code, out = compare(entry("r1", 1000.0), entry("r2", 980.0))
    assert code == 0 and out.out.strip().endswith("no regression")
    code, out = compare(entry("r1", 1000.0, machine_id="m2"), entry("r2", 980.0))
    assert code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and "no earlier" in out.err and "machine m1" in out.err
    png = tmp_path / "plot.png"
    code, out = compare(entry("r1", 1000.0), entry("r2", 1100.0), extra=["--plot", str(png), "--benchmark", "loaders"])
    assert code == 0 and "improved" in out.out and png.read_bytes()[:8] == PNG_MAGIC


def test_bench_compare_warns_in_one_line_about_a_malformed_line(tmp_path, capsys):
    path = tmp_path / "history.jsonl"
    write_history(path, [entry("r1", 1000.0)])
    wrong_type = {**entry("r9", 1.0), "figures": {"fps": {"value": "fast", "better": "higher"}}}
    with open(path, "a") as f:
        f.write("{not json\n" + json.dumps(wrong_type) + "\n")
    write_history(path, [entry("r2", 1000.0)])
    assert cli.main(["bench", "compare", "--history", str(path), "--machine", "m1"]) == 0
    err = capsys.readouterr().err
    assert err == "".join(f"signstream bench: warning: {path}:{n}: malformed history line skipped\n" for n in (2, 3))


def test_run_all_appends_the_benchmarks_that_ran_to_the_history(tmp_path, monkeypatch):
    def fake_import(name):
        bench = name.rsplit(".", 1)[1]

        def run(out, quick=False):
            if bench == "loaders":
                raise RuntimeError("broken benchmark")
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{bench}.json").write_text(json.dumps({"speedup": 2.0, "size_ratio": 0.01}))
            (out / f"{bench}.md").write_text(f"## {bench}\n")

        return types.SimpleNamespace(run=run)

    monkeypatch.setattr(run_all.importlib, "import_module", fake_import)
    out = tmp_path / "results"
    out.mkdir()
    (out / "loaders.json").write_text(json.dumps(loaders_result(5000.0)))  # stale: this run's loaders failed
    assert run_all.main(["--out", str(out), "--quick", "--only", "pack,threads,loaders"]) == 1
    entries = history.read(tmp_path / "history.jsonl")
    assert [(e["benchmark"], list(e["figures"])) for e in entries] == [
        ("pack", ["size_ratio"]),
        ("threads", ["speedup"]),
    ]
    assert all(e["quick"] for e in entries)
    assert run_all.main(["--out", str(out), "--only", "pack", "--no-history"]) == 0
    assert len(history.read(tmp_path / "history.jsonl")) == 2
