"""``signstream synth``: a synthetic corpus in the exact PHOENIX release layout.

The real corpora cannot ship, so the demo, the tests and the benchmarks run on this one. It writes what the
``phoenix2014`` and ``phoenix2014t`` corpus layouts read, byte for byte (frame folder ``fullFrame-210x260px``
whatever the frame size), with learnable content: every gloss a fixed motion (``signstream.tools.synth_render``).
Key invariant: the same options give byte-identical files, whatever the number of workers; ``OUT/synth.json``
records options and totals. Why: docs/design/synthetic.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from signstream import SignstreamError, __version__, lookup
from signstream.loaders.cpu import (
    WORKER_TIMEOUT_S,
    available_cores,
    one_opencv_thread,
    worker_timeout_message,
)
from signstream.loaders.fileio import atomic_write, write_json
from signstream.tools.synth_render import (
    GLOSS_MOTIONS,
    OFF,
    ON,
    REVERSED_PAIRS,
    WORDS,
    make_signers,
    render_video,
    vocabulary,
)

__all__ = ["GLOSS_MOTIONS", "REVERSED_PAIRS", "LAYOUTS", "make_corpus", "plan_corpus",
           "corpus_summary", "video_rng", "vocabulary"]  # fmt: skip

HELP = "write a synthetic sign language corpus in the PHOENIX-2014 / 2014-T release layout"
SPLITS = ("train", "dev", "test")
FRAME_FOLDER = "fullFrame-210x260px"  # the release name, kept for every frame size
MARKER = "synth.json"
FORMAT = "signstream-synth/1"
# Fixed PNG settings: the SUB filter at zlib level 1 is about twice as fast as
# OpenCV's adaptive filtering for the same size, and OpenCV writes no tIME chunk.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FIRST_DAY = dt.date(2009, 7, 1)
_PER_BROADCAST = 7  # sentences per (synthetic) weather broadcast


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Plan:
    """One video to write: its name, signer, glosses and translation."""

    split: str
    index: int
    name: str
    signer: str
    glosses: tuple[str, ...]
    translation: str


@dataclass(frozen=True)
class ReleaseLayout:
    """How one release lays out annotations and frames (what synth writes for a corpus layout).

    Attributes:
        root: path parts from OUT to the corpus root (holds annotations/, features/).
        header: CSV column names.
        csv_name: split -> CSV file name in ``annotations/manual``.
        row: plan -> CSV fields.
        video_name: (broadcast stem, sentence number) -> video name.
        frame_subdir: folder between ``<split>/<name>`` and the PNGs ("" = none).
        frame_file: (name, frame index from 0) -> PNG file name.
        max_frames: frames a video may have before file names stop sorting.
    """

    root: tuple[str, ...]
    header: tuple[str, ...]
    csv_name: Callable[[str], str]
    row: Callable[[Plan], list[str]]
    video_name: Callable[[str, int], str]
    frame_subdir: str
    frame_file: Callable[[str, int], str]
    max_frames: int


# Keyed by the registered corpus layout (signstream.loaders.corpora.LAYOUTS) that reads
# the corpus back: synth keeps only the rendering facts, the readers own the layouts.
LAYOUTS = {
    "phoenix2014": ReleaseLayout(
        root=("phoenix2014-release", "phoenix-2014-multisigner"),
        header=("id", "folder", "signer", "annotation"),
        csv_name=lambda split: f"{split}.corpus.csv",
        row=lambda p: [p.name, f"{p.name}/1/*.png", p.signer, " ".join(p.glosses)],
        video_name=lambda stem, n: f"{stem}_default-{n}",
        frame_subdir="1",
        frame_file=lambda name, i: f"{name}.avi_pid0_fn{i:06d}-0.png",
        max_frames=1_000_000,
    ),
    "phoenix2014t": ReleaseLayout(
        root=("PHOENIX-2014-T-release-v3", "PHOENIX-2014-T"),
        header=("name", "video", "start", "end", "speaker", "orth", "translation"),
        csv_name=lambda split: f"PHOENIX-2014-T.{split}.corpus.csv",
        row=lambda p: [
            p.name,
            f"{p.name}/1/*.png",
            "-1",
            "-1",
            p.signer,
            " ".join(p.glosses),
            p.translation,
        ],  # fmt: skip
        video_name=lambda stem, n: f"{stem}-{n}",
        frame_subdir="",
        frame_file=lambda name, i: f"images{i + 1:04d}.png",
        max_frames=9999,
    ),
}


# --------------------------------------------------------------------------- planning
def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders video ``index`` of ``split`` (speed, lighting, noise).

    Derived from the corpus seed alone, so videos can be rendered in any
    order, in parallel, and still come out identical.
    """
    return np.random.default_rng([seed, 2, SPLITS.index(split), index])


def _broadcast_stem(serial: int) -> tuple[str, int]:
    """PHOENIX-style date stem and sentence number for the serial-th video."""
    day, n = divmod(serial, _PER_BROADCAST)
    d = _FIRST_DAY + dt.timedelta(days=day)
    show = ("heute", "tagesschau")[day % 2]
    return f"{d.day:02d}{_MONTHS[d.month - 1]}_{d.year}_{_WEEKDAYS[d.weekday()]}_{show}", n


def _word(gloss: str) -> str:
    """Gloss -> pseudo-German word: drop the prefix, lower-case, umlauts back."""
    base = gloss.split("-", 1)[1] if gloss.startswith(("loc-", "cl-")) else gloss
    base = re.sub(r"(?<![AEQ])UE", "Ü", base.replace("AE", "Ä").replace("OE", "Ö"))
    return base.lower()


def _translation(glosses: list[str], rng: np.random.Generator) -> str:
    """A lower-case pseudo-German sentence derived from the glosses (2014-T style)."""
    fillers = ("und", "im", "am", "mit", "dann", "auch", "bei", "der", "die", "das")
    words = ["und nun"] if rng.random() < 0.2 else []
    for g in glosses:
        if g in (ON, OFF):
            continue
        if words and rng.random() < 0.5:
            words.append(str(rng.choice(fillers)))
        words.append(_word(g))
    return " ".join(words) + " ."


def _sentences(rng: np.random.Generator, vocab: list[str], lengths: list[int], cover: bool) -> list[list[str]]:
    """Draw sentences of the given lengths with no gloss repeated back to back.

    With ``cover`` the glosses come from back-to-back shuffles of the
    vocabulary, so every gloss occurs once there are as many tokens as glosses
    (the packer builds the vocabulary from the train split).
    """
    total = sum(lengths)
    stream: list[str] = []
    while cover and len(stream) < total:
        stream += [vocab[i] for i in rng.permutation(len(vocab))]
    out, pos = [], 0
    for n in lengths:
        if cover:
            sent, pos = stream[pos : pos + n], pos + n
        else:
            sent = [vocab[i] for i in rng.integers(len(vocab), size=n)]
        for i in range(1, n):
            while sent[i] == sent[i - 1]:
                sent[i] = vocab[int(rng.integers(len(vocab)))]
        out.append(sent)
    return out


def plan_corpus(
    layout: str = "phoenix2014",
    seed: int = 0,
    train: int = 300,
    dev: int = 60,
    test: int = 60,
    vocab: int = 40,
    min_glosses: int = 2,
    max_glosses: int = 7,
    signers: int = 7,
    on_off_rate: float = 0.3,
) -> dict[str, list[Plan]]:
    """Decide names, signers, sentences and translations (no rendering).

    Args: as :func:`make_corpus`.

    Returns:
        split -> list of :class:`Plan`, in CSV row order.
    """
    lay = lookup(LAYOUTS, layout, "layout")
    words = vocabulary(vocab)
    ids = [s.ident for s in make_signers(seed, signers)]
    plans, serial = {}, 0
    for k, (split, count) in enumerate(zip(SPLITS, (train, dev, test), strict=True)):
        rng = np.random.default_rng([seed, 1, k])
        lengths = [int(n) for n in rng.integers(min_glosses, max_glosses + 1, size=count)]
        rows = []
        for i, sent in enumerate(_sentences(rng, words, lengths, cover=split == "train")):
            sent = ([ON] if rng.random() < on_off_rate else []) + sent
            sent += [OFF] if rng.random() < on_off_rate else []
            stem, n = _broadcast_stem(serial + i)
            rows.append(Plan(split, i, lay.video_name(stem, n), ids[int(rng.integers(len(ids)))],
                             tuple(sent), _translation(sent, rng)))  # fmt: skip
        plans[split] = rows
        serial += count
    return plans


# --------------------------------------------------------------------------- checks
def _check_options(o: dict) -> None:
    """Reject bad options with one-line messages naming the option."""

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise SignstreamError(f"{key}={o[key]!r}: {rule}")

    ints = (
        "seed",
        "train",
        "dev",
        "test",
        "vocab",
        "height",
        "width",
        "min_glosses",
        "max_glosses",
        "gloss_frames",
        "transition_frames",
        "signers",
        "noise",
    )
    for key in ints:
        need(isinstance(o[key], int) and not isinstance(o[key], bool), key, "must be an integer")
    for key in ("seed", "dev", "test"):
        need(o[key] >= 0, key, "must be >= 0")
    need(o["train"] >= 1, "train", "must be >= 1 (the vocabulary comes from the train split)")
    need(2 <= o["vocab"] <= len(WORDS), "vocab", f"must be between 2 and {len(WORDS)}")
    for key in ("height", "width"):
        need(
            32 <= o[key] <= 2160 and o[key] % 2 == 0,
            key,
            "must be even and between 32 and 2160 (yuv420p video needs even sizes)",
        )
    need(1 <= o["min_glosses"] <= 30, "min_glosses", "must be between 1 and 30")
    need(
        o["min_glosses"] <= o["max_glosses"] <= 30,
        "max_glosses",
        f"must be between min_glosses={o['min_glosses']} and 30",
    )
    need(3 <= o["gloss_frames"] <= 200, "gloss_frames", "must be between 3 and 200")
    need(1 <= o["transition_frames"] <= 100, "transition_frames", "must be between 1 and 100")
    need(1 <= o["signers"] <= 99, "signers", "must be between 1 and 99")
    need(0.0 <= o["on_off_rate"] <= 1.0, "on_off_rate", "must be between 0 and 1")
    need(0 <= o["noise"] <= 32, "noise", "must be between 0 and 32 grey levels")
    # Worst case of synth_render.timeline: 2 markers, slowest pace, rest frames.
    signs = o["max_glosses"] + 2
    worst = signs * (math.ceil(o["gloss_frames"] * 1.43) + math.ceil(o["transition_frames"] * 1.56))
    need(
        worst + o["transition_frames"] * 2 + 8 <= lookup(LAYOUTS, o["layout"], "layout").max_frames,
        "gloss_frames",
        "videos would exceed the layout's frame-name limit",
    )


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT unless it holds a previous synthetic corpus to replace."""
    if out.exists() and not out.is_dir():
        raise SignstreamError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise SignstreamError(f"{out}: not empty; pass --overwrite to replace a synthetic corpus")
    if not (out / MARKER).is_file():
        # Never delete what we did not write: a real PHOENIX copy could live here.
        raise SignstreamError(f"{out}: refusing to overwrite, it holds no {MARKER} "
                              "so it is not a synthetic corpus")  # fmt: skip
    for lay in LAYOUTS.values():
        shutil.rmtree(out / lay.root[0], ignore_errors=True)
    (out / MARKER).unlink()


# --------------------------------------------------------------------------- rendering
def _write_video(job: tuple) -> tuple[int, int]:
    """Render one video into a temporary folder, then rename it into place.

    A killed run leaves only a dot-named temporary folder, never a video
    folder with missing frames.

    Returns:
        (frames, bytes) written.
    """
    layout, split_dir, plan, signer, seed, opts = job
    lay = lookup(LAYOUTS, layout, "layout")
    final = Path(split_dir) / plan.name
    tmp = Path(split_dir) / f".{plan.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    frame_dir = tmp / lay.frame_subdir if lay.frame_subdir else tmp
    frame_dir.mkdir(parents=True)
    frames = render_video(list(plan.glosses), signer, video_rng(seed, plan.split, plan.index),
                          **opts)  # fmt: skip
    count = size = 0
    for i, rgb in enumerate(frames):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), PNG_PARAMS)
        if not ok:
            raise SignstreamError(f"{plan.name}: PNG encoding failed for frame {i}")
        (frame_dir / lay.frame_file(plan.name, i)).write_bytes(buf.tobytes())
        count, size = count + 1, size + len(buf)
    os.replace(tmp, final)
    return count, size


def _run_jobs(jobs: list[tuple], workers: int) -> list[tuple[int, int]]:
    if workers <= 1 or len(jobs) <= 1:
        return [_write_video(j) for j in jobs]
    # fork starts fast and works from notebooks and stdin scripts; the workers
    # only use numpy and cv2 (one thread each). macOS cannot fork safely.
    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(workers, initializer=one_opencv_thread) as pool:
        pending = pool.map_async(_write_video, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
        try:  # a whole corpus, so the bound scales with the jobs each worker has
            return pending.get(timeout=WORKER_TIMEOUT_S * max(1, len(jobs) // workers))
        except multiprocessing.TimeoutError:
            raise SignstreamError(worker_timeout_message(workers)) from None


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> int:
    text = "".join("|".join(r) + "\n" for r in [list(header), *rows]).encode("utf-8")
    with atomic_write(path, "wb") as f:
        f.write(text)
    return len(text)


# --------------------------------------------------------------------------- corpus
def make_corpus(
    out: str | os.PathLike,
    layout: str = "phoenix2014",
    seed: int = 0,
    train: int = 300,
    dev: int = 60,
    test: int = 60,
    vocab: int = 40,
    height: int = 210,
    width: int = 260,
    min_glosses: int = 2,
    max_glosses: int = 7,
    *,
    gloss_frames: int = 8,
    transition_frames: int = 3,
    signers: int = 7,
    on_off_rate: float = 0.3,
    noise: int = 2,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic corpus in the real PHOENIX release layout.

    Args:
        out: output folder (created; must be empty unless ``overwrite``).
        layout: ``"phoenix2014"`` or ``"phoenix2014t"``, the corpus layout that reads it back.
        seed: corpus seed (>= 0); same seed and options -> identical bytes.
        train, dev, test: videos per split.
        vocab: content glosses (first ``vocab`` of ``vocabulary()``).
        height, width: frame size (the folder keeps its release name).
        min_glosses, max_glosses: content glosses per sentence, not counting
            the ``__ON__``/``__OFF__`` markers.
        gloss_frames: nominal frames per sign (+-30 % speed per video).
        transition_frames: nominal frames between two signs.
        signers: distinct signers ``Signer01``...
        on_off_rate: chance of an ``__ON__`` start and, separately, an ``__OFF__`` end.
        noise: per-frame luma noise amplitude in grey levels (0 = none).
        workers: processes (default: all usable cores); does not change output.
        overwrite: replace a previous synthetic corpus in ``out``.

    Returns:
        The corpus root (the folder holding ``annotations/`` and ``features/``),
        to pass to ``signstream pack --root``.

    Raises:
        SignstreamError: on a bad option or a non-empty ``out``.
    """
    opts = dict(layout=layout, seed=seed, train=train, dev=dev, test=test, vocab=vocab,
                height=height, width=width, min_glosses=min_glosses, max_glosses=max_glosses,
                gloss_frames=gloss_frames, transition_frames=transition_frames,
                signers=signers, on_off_rate=on_off_rate, noise=noise)  # fmt: skip
    lay = lookup(LAYOUTS, layout, "layout")
    _check_options(opts)
    out = Path(out)
    _prepare_out(out, overwrite)
    plans = plan_corpus(layout, seed, train, dev, test, vocab, min_glosses, max_glosses,
                        signers, on_off_rate)  # fmt: skip
    people = {s.ident: s for s in make_signers(seed, signers)}
    root = out.joinpath(*lay.root)
    render = dict(height=height, width=width, gloss_frames=gloss_frames,
                  transition_frames=transition_frames, noise=noise)  # fmt: skip
    jobs = []
    for split in SPLITS:
        split_dir = root / "features" / FRAME_FOLDER / split
        split_dir.mkdir(parents=True, exist_ok=True)
        jobs += [(layout, str(split_dir), p, people[p.signer], seed, render) for p in plans[split]]
    results = iter(_run_jobs(jobs, workers or available_cores()))
    splits = {}
    for split in SPLITS:
        done = [next(results) for _ in plans[split]]
        csv_bytes = _write_csv(root / "annotations" / "manual" / lay.csv_name(split), lay.header,
                               [lay.row(p) for p in plans[split]])  # fmt: skip
        splits[split] = {"videos": len(done), "frames": sum(f for f, _ in done),
                         "png_bytes": sum(b for _, b in done), "csv_bytes": csv_bytes}  # fmt: skip
    _write_marker(out, lay, opts, splits)
    return root


def _write_marker(out: Path, lay: ReleaseLayout, opts: dict, splits: dict) -> None:
    """Record options and totals in OUT/synth.json (no times: output stays deterministic)."""
    words = vocabulary(opts["vocab"])
    totals = {k: sum(s[k] for s in splits.values()) for k in next(iter(splits.values()))}
    write_json(out / MARKER, {
        "format": FORMAT, "layout": opts["layout"], "root": "/".join(lay.root),
        "options": opts, "splits": splits, "totals": totals,
        "vocabulary": words, "markers": [ON, OFF],
        "reversed_pairs": [[a, b] for a, b in REVERSED_PAIRS if {a, b} <= {*words, ON, OFF}],
        "versions": {"signstream": __version__, "numpy": np.__version__, "opencv": cv2.__version__},
    })  # fmt: skip


def corpus_summary(out: str | os.PathLike) -> dict:
    """Read ``OUT/synth.json`` written by :func:`make_corpus`.

    Raises:
        SignstreamError: when OUT holds no synthetic corpus.
    """
    path = Path(out) / MARKER
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SignstreamError(f"{path}: cannot read synthetic corpus summary ({exc})") from None
    if info.get("format") != FORMAT:
        raise SignstreamError(f"{path}: format {info.get('format')!r} is not {FORMAT}")
    return info


# --------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``signstream synth``."""
    p.add_argument("--out", required=True, help="output folder (empty or absent)")
    p.add_argument(
        "--layout",
        default="phoenix2014",
        choices=sorted(LAYOUTS),
        help="corpus layout to write, as `signstream pack` names it (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    for split, n in (("train", 300), ("dev", 60), ("test", 60)):
        p.add_argument(f"--{split}", type=int, default=n, help=f"{split} videos (default: {n})")
    p.add_argument("--vocab", type=int, default=40, help=f"content glosses, 2..{len(WORDS)} (default: %(default)s)")
    p.add_argument("--height", type=int, default=210, help="frame height (default: %(default)s)")
    p.add_argument("--width", type=int, default=260, help="frame width (default: %(default)s)")
    p.add_argument("--min-glosses", type=int, default=2, help="glosses per sentence, at least")
    p.add_argument("--max-glosses", type=int, default=7, help="glosses per sentence, at most")
    p.add_argument(
        "--gloss-frames",
        type=int,
        default=8,
        help="nominal frames per sign; speed varies +-30%% (default: %(default)s)",
    )
    p.add_argument(
        "--transition-frames", type=int, default=3, help="nominal frames between signs (default: %(default)s)"
    )
    p.add_argument("--signers", type=int, default=7, help="number of signers (default: 7)")
    p.add_argument(
        "--on-off-rate", type=float, default=0.3, help="chance of __ON__ / __OFF__ markers per sentence (default: 0.3)"
    )
    p.add_argument("--noise", type=int, default=2, help="per-frame noise amplitude in grey levels (default: 2)")
    p.add_argument(
        "--workers", type=int, default=None, help="processes (default: all cores; output does not depend on it)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic corpus already in --out")


def run(args: argparse.Namespace) -> int:
    """Write the corpus and print a one-line summary."""
    start = time.perf_counter()
    root = make_corpus(
        args.out, args.layout, args.seed, args.train, args.dev, args.test, args.vocab,
        args.height, args.width, args.min_glosses, args.max_glosses,
        gloss_frames=args.gloss_frames, transition_frames=args.transition_frames,
        signers=args.signers, on_off_rate=args.on_off_rate, noise=args.noise,
        workers=args.workers, overwrite=args.overwrite,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    t = corpus_summary(args.out)["totals"]
    size = t["png_bytes"] + t["csv_bytes"]
    print(f"synth: {t['videos']} videos, {t['frames']} frames, {size} bytes "
          f"({size / 2**20:.1f} MiB) in {seconds:.1f} s; root: {root}")  # fmt: skip
    return 0
