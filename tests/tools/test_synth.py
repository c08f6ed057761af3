"""The synthetic corpus: release layout, determinism, content rules, the `signstream synth` CLI."""

import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from signstream import SignstreamError
from signstream.loaders.corpora import LAYOUTS, detect_layout
from signstream.tools import synth
from signstream.tools.cli import main
from signstream.tools.synth_render import (
    GLOSS_MOTIONS,
    OFF,
    ON,
    REVERSED_PAIRS,
    Painter,
    make_signers,
    render_sign,
    render_video,
    sign_track,
    timeline,
)

# Tiny and short: 48x64 frames, 3-frame signs, 2-4 glosses per sentence.
TINY = dict(height=48, width=64, gloss_frames=3, transition_frames=1, min_glosses=2, max_glosses=4, vocab=10, workers=1)
SPLITS = ("train", "dev", "test")


def _make(out, layout="phoenix2014", seed=0, train=4, dev=2, test=2, **kw):
    return synth.make_corpus(out, layout=layout, seed=seed, train=train, dev=dev, test=test, **{**TINY, **kw})


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """One tiny corpus per layout, shared by the read-only tests below."""
    return {lay: _make(tmp_path_factory.mktemp(lay), lay) for lay in synth.LAYOUTS}


def _rows(csv_path: Path) -> tuple[str, list[list[str]]]:
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    return lines[0], [line.split("|") for line in lines[1:]]


def _all_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- layout
def test_phoenix2014_layout_headers_and_frame_names_match_the_release(corpora):
    root = corpora["phoenix2014"]
    assert root.parts[-2:] == ("phoenix2014-release", "phoenix-2014-multisigner")
    for split in SPLITS:
        header, rows = _rows(root / "annotations" / "manual" / f"{split}.corpus.csv")
        assert header == "id|folder|signer|annotation"
        assert rows and all(len(r) == 4 for r in rows)
        for name, folder, signer, annotation in rows:
            assert folder == f"{name}/1/*.png"
            assert re.fullmatch(r"Signer0[1-7]", signer) and annotation.strip()
            frames = sorted((root / "features" / "fullFrame-210x260px" / split / name / "1").iterdir())
            assert [f.name for f in frames] == [f"{name}.avi_pid0_fn{i:06d}-0.png" for i in range(len(frames))]
            assert cv2.imread(str(frames[0]), cv2.IMREAD_UNCHANGED).shape == (48, 64, 3)


def test_phoenix2014t_layout_headers_and_frame_names_match_the_release(corpora):
    root = corpora["phoenix2014t"]
    assert root.parts[-2:] == ("PHOENIX-2014-T-release-v3", "PHOENIX-2014-T")
    for split in SPLITS:
        header, rows = _rows(root / "annotations" / "manual" / f"PHOENIX-2014-T.{split}.corpus.csv")
        assert header == "name|video|start|end|speaker|orth|translation"
        for name, video, start, end, speaker, orth, text in rows:
            assert (video, start, end) == (f"{name}/1/*.png", "-1", "-1")
            assert re.fullmatch(r"Signer0[1-7]", speaker) and orth.strip()
            assert text == text.lower() and text.endswith(" .") and len(text) > 3
            folder = root / "features" / "fullFrame-210x260px" / split / name
            names = sorted(f.name for f in folder.iterdir())  # no `1/` level in this release
            assert names == [f"images{i + 1:04d}.png" for i in range(len(names))]


@pytest.mark.parametrize("layout", sorted(synth.LAYOUTS))
def test_phoenix_adapters_list_every_video_with_its_frames(corpora, layout):
    rows = LAYOUTS[layout].read(corpora[layout])
    summary = synth.corpus_summary(corpora[layout].parents[1])
    assert len(rows) == summary["totals"]["videos"] == 8
    assert all(r.problem is None for r in rows)
    assert sum(len(r.frames) for r in rows) == summary["totals"]["frames"]


def test_every_synth_layout_is_a_registered_corpus_layout_that_recognises_what_synth_wrote(corpora):
    assert set(synth.LAYOUTS) <= set(LAYOUTS)
    for layout, root in corpora.items():
        # from the corpus root and from the folder the user made, as `--out` named it
        assert detect_layout(root).name == layout
        assert detect_layout(root.parents[1]).name == layout


def test_frame_size_keeps_the_release_folder_name(corpora):
    feats = corpora["phoenix2014"] / "features"
    assert [p.name for p in feats.iterdir()] == ["fullFrame-210x260px"]


@pytest.mark.parametrize("layout", sorted(synth.LAYOUTS))
def test_sorted_frame_files_are_the_rendered_frames_in_temporal_order(corpora, layout):
    rows = LAYOUTS[layout].read(corpora[layout])
    row = max(rows, key=lambda r: len(r.frames))
    assert len(row.frames) > 10  # crosses a digit boundary, so sorting is really tested
    plan = next(p for p in synth.plan_corpus(layout, 0, 4, 2, 2, 10, 2, 4)[row.split] if p.name == row.name)
    signer = {s.ident: s for s in make_signers(0, 7)}[plan.signer]
    expected = list(
        render_video(
            list(plan.glosses),
            signer,
            synth.video_rng(0, row.split, plan.index),
            height=48,
            width=64,
            gloss_frames=3,
            transition_frames=1,
        )
    )
    got = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in row.frames]
    assert len(got) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_png_files_carry_no_time_or_text_chunks(corpora):
    png = next((corpora["phoenix2014"] / "features").rglob("*.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = set(), 8
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos : pos + 4]), png[pos + 4 : pos + 8]
        chunks.add(kind)
        pos += 12 + length
    assert chunks == {b"IHDR", b"IDAT", b"IEND"}


def test_summary_totals_match_the_files_on_disk(corpora):
    out = corpora["phoenix2014"].parents[1]
    totals = synth.corpus_summary(out)["totals"]
    pngs = list(out.rglob("*.png"))
    assert totals["frames"] == len(pngs)
    assert totals["png_bytes"] == sum(p.stat().st_size for p in pngs)


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    _make(tmp_path / "a", seed=3, workers=1)
    _make(tmp_path / "b", seed=3, workers=2)
    a, b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 20
    assert all(a[k] == b[k] for k in a)


def test_different_seed_gives_different_sentences_and_frames(tmp_path):
    _make(tmp_path / "a", seed=3)
    _make(tmp_path / "b", seed=4)
    a, b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    csv = "phoenix2014-release/phoenix-2014-multisigner/annotations/manual/train.corpus.csv"
    assert a[csv] != b[csv]
    common = [k for k in a.keys() & b.keys() if k.endswith(".png")]
    assert common and any(a[k] != b[k] for k in common)


# ---------------------------------------------------------------- content
def test_sentence_lengths_stay_within_bounds_and_markers_only_at_the_ends():
    plans = synth.plan_corpus("phoenix2014", 1, 200, 50, 50, 30, min_glosses=3, max_glosses=5, on_off_rate=0.5)
    for plan in (p for split in plans.values() for p in split):
        body = [g for g in plan.glosses if g not in (ON, OFF)]
        assert 3 <= len(body) <= 5
        assert ON not in plan.glosses[1:] and OFF not in plan.glosses[:-1]
        assert all(a != b for a, b in zip(plan.glosses, plan.glosses[1:]))  # no back-to-back repeats


def test_tokens_include_prefixed_forms_and_on_off_markers():
    plans = synth.plan_corpus("phoenix2014", 0, 100, 0, 0, 40)
    tokens = {g for p in plans["train"] for g in p.glosses}
    assert {ON, OFF} <= tokens
    assert any(g.startswith("loc-") for g in tokens) and any(g.startswith("cl-") for g in tokens)
    small = synth.vocabulary(10)
    assert any(g.startswith("loc-") for g in small) and any(g.startswith("cl-") for g in small)


def test_train_split_covers_the_whole_vocabulary():
    plans = synth.plan_corpus("phoenix2014", 5, train=12, dev=3, test=3, vocab=24, min_glosses=2, max_glosses=2)
    assert {g for p in plans["train"] for g in p.glosses} - {ON, OFF} == set(synth.vocabulary(24))


@pytest.mark.parametrize("layout,suffix", [("phoenix2014", r"_default-\d"), ("phoenix2014t", r"-\d")])
def test_video_names_are_unique_dot_free_and_phoenix_style(layout, suffix):
    plans = synth.plan_corpus(layout, 0, 40, 10, 10, 12)
    names = [p.name for split in plans.values() for p in split]
    assert len(set(names)) == len(names) == 60
    pattern = r"\d{2}[A-Z][a-z]+_\d{4}_[A-Z][a-z]+day_(heute|tagesschau)" + suffix + "+"
    assert all(re.fullmatch(pattern, n) for n in names), names[:3]


def test_signers_differ_in_look_size_and_place():
    signers = make_signers(0, 7)
    assert [s.ident for s in signers] == [f"Signer0{i}" for i in range(1, 8)]
    assert len({s.cloth for s in signers}) == 7 and len({s.skin for s in signers}) == 7
    assert len({round(s.size, 3) for s in signers}) == 7 and len({round(s.dx, 3) for s in signers}) == 7


def test_signing_speed_varies_between_videos_within_30_percent():
    lengths = [len(timeline(["REGEN"] * 5, np.random.default_rng(i), 20, 1)) for i in range(40)]
    assert len(set(lengths)) > 10
    # 5 signs of 20 nominal frames: pace 0.7-1.3 and +-10 % jitter per sign.
    assert min(lengths) >= 5 * 12 and max(lengths) <= 5 * 29 + 20


def test_frame_noise_is_mild_and_changes_every_frame():
    signer = make_signers(0, 1)[0]
    clean = Painter(signer, 48, 64, np.random.default_rng(1), noise=0)
    noisy = Painter(signer, 48, 64, np.random.default_rng(1), noise=2)
    rng = np.random.default_rng(2)
    f1, f2 = noisy.frame(sign_track("REGEN", 2)[0], rng), noisy.frame(sign_track("REGEN", 2)[0], rng)
    diff = f1.astype(int) - clean.frame(sign_track("REGEN", 2)[0]).astype(int)
    assert 0 < np.abs(diff).max() <= 2
    assert not np.array_equal(f1, f2)


# ---------------------------------------------------------------- motions
def test_reversed_glosses_render_each_others_frames_in_reverse_order():
    pairs = [(a, b) for a, b in REVERSED_PAIRS if a not in (ON, OFF)]
    assert len(pairs) >= 3 and (ON, OFF) in REVERSED_PAIRS
    for a, b in pairs[:3]:
        fa, fb = render_sign(a, 10), render_sign(b, 10)
        assert not np.array_equal(fa, fb)  # only the temporal order tells them apart
        assert np.array_equal(fb, fa[::-1])
        ta, tb = sign_track(a, 10), sign_track(b, 10)
        assert [h[0][:2] for h in tb] == [h[0][:2] for h in ta[::-1]]


def test_every_gloss_renders_a_different_frame_sequence():
    renders = {g: render_sign(g, 8, height=32, width=40).tobytes() for g in GLOSS_MOTIONS}
    assert len(set(renders.values())) == len(GLOSS_MOTIONS) == len(synth.vocabulary()) + 2
    places = {(m.path, m.angle, m.location, m.reverse) for m in GLOSS_MOTIONS.values()}
    assert len(places) == len(GLOSS_MOTIONS)  # no two glosses share path, place and direction


# ---------------------------------------------------------------- errors and CLI
@pytest.mark.parametrize("bad,word", [
    (["--vocab", "1"], "vocab"), (["--vocab", "1000"], "vocab"), (["--train", "-1"], "train"),
    (["--dev", "-2"], "dev"), (["--height", "47"], "height"),
    (["--min-glosses", "5", "--max-glosses", "3"], "max_glosses"),
])  # fmt: skip
def test_cli_bad_option_is_a_one_line_error_with_exit_code_2(tmp_path, capsys, bad, word):
    assert main(["synth", "--out", str(tmp_path / "o"), "--workers", "1", *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("signstream synth: error:") and word in err
    assert not (tmp_path / "o").exists()


def test_non_empty_out_needs_overwrite_and_overwrite_never_touches_foreign_folders(tmp_path, capsys):
    args = [
        "synth",
        "--train",
        "2",
        "--dev",
        "1",
        "--test",
        "1",
        "--height",
        "32",
        "--width",
        "32",
        "--gloss-frames",
        "3",
        "--max-glosses",
        "2",
        "--workers",
        "1",
    ]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("real data")
    assert main([*args, "--out", str(foreign), "--overwrite"]) == 2
    assert "no synth.json" in capsys.readouterr().err and (foreign / "keep.txt").exists()

    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and re.search(r"4 videos, \d+ frames, \d+ bytes .* in [\d.]+ s", line)
    assert main([*args, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--seed", "9", "--overwrite"]) == 0
    assert synth.corpus_summary(out)["options"]["seed"] == 9


def test_library_errors_name_the_option(tmp_path):
    with pytest.raises(SignstreamError, match="layout"):
        synth.make_corpus(tmp_path / "x", layout="phoenix2015")
    with pytest.raises(SignstreamError, match="signers"):
        _make(tmp_path / "y", signers=0)


def test_an_unknown_layout_names_it_and_the_choices(tmp_path):
    with pytest.raises(SignstreamError, match="unknown layout 'nope'; choose from phoenix2014, phoenix2014t"):
        synth.make_corpus(tmp_path / "out", layout="nope")
    assert not (tmp_path / "out").exists()
