"""Installing signstream as a library: declared ranges, DALI as an optional extra, ``--no-deps``.

The declared ranges (pyproject.toml) must accept the pinned set (constraints.txt) and leave a
user's torch alone; every DALI import is lazy, so the CPU chain runs without DALI installed, and
asking for the DALI backend without it names the extra to install.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from signstream import SignstreamError
from signstream.loaders import make_loader

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE_DIRS = sorted(set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()) - {"."})

# released versions a user's environment may hold, each side of the declared ranges
ACCEPTED = {
    "torch": ["2.0.1", "2.1.2", "2.3.1", "2.4.1+cu121", "2.6.0", "2.7.1", torch.__version__],
    "torchvision": ["0.15.2", "0.16.2", "0.19.1", "0.21.0", "0.22.1"],
    "nvidia-dali-cuda120": ["2.4.0"],
    "nvidia-dali-cuda130": ["2.4.0"],
}
CALENDAR_VERSIONED = {"fsspec", "s3fs"}  # no major release to stop below
REJECTED = {
    "torch": ["1.13.1", "3.0.0"],
    "torchvision": ["0.14.1", "1.0.0"],
    "nvidia-dali-cuda120": ["1.30.0", "3.0.0"],
    "nvidia-dali-cuda130": ["3.0.0"],
}


def _declared() -> dict[str, list[Requirement]]:
    """Requirements by group: ``""`` for the default ones, else the extra's name."""
    groups = {"": PYPROJECT["project"]["dependencies"], **PYPROJECT["project"]["optional-dependencies"]}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_ranges_accept_the_pinned_set_and_other_releases():
    """Limit: this checks version numbers against the ranges; only the pinned set is run here."""
    declared, pins = _declared(), _pins()
    runtime = [r for group in ("", "dali-cuda12", "dali-cuda13") for r in declared[group]]
    by_name = {canonicalize_name(r.name): r for r in runtime}
    for name, req in by_name.items():
        upper = any(s.operator == "<" for s in req.specifier)
        assert upper or name in CALENDAR_VERSIONED, f"{name}: no upper bound below the next major"
    for req in [*runtime, *declared["dev"]]:  # what `make setup` installs satisfies what is declared
        pin = pins.get(canonicalize_name(req.name))
        assert pin is None or req.specifier.contains(pin, prereleases=True), f"constraints.txt {req.name}=={pin}"
    for name, versions in ACCEPTED.items():
        assert all(by_name[name].specifier.contains(v) for v in versions), (name, by_name[name].specifier)
    for name, versions in REJECTED.items():
        assert not any(by_name[name].specifier.contains(v) for v in versions), (name, by_name[name].specifier)
    assert not [r.name for r in declared[""] if r.name.startswith("nvidia-dali")]  # DALI is optional
    assert [r.name for r in declared["dali-cuda12"]] == ["nvidia-dali-cuda120"]
    assert [r.name for r in declared["dali-cuda13"]] == ["nvidia-dali-cuda130"]
    assert [r.extras for r in declared["dev"] if r.name == "signstream"] == [{"dali-cuda13"}]  # the suite's DALI


def _module_level_imports(tree: ast.AST):
    """Import nodes that run when the module is imported (not inside a function body)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def test_every_dali_import_is_lazy():
    """No module of the package imports DALI at import time (so every module imports without it)."""
    eager = []
    for path in [ROOT / "__init__.py", *(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))]:
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}" for a in node.names]
            eager += [
                f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[:2] == ["nvidia", "dali"]
            ]
    assert eager == []


@pytest.mark.parametrize(
    ("cuda", "extra"),
    [("13.0", "'signstream[dali-cuda13]'"), ("12.8", "'signstream[dali-cuda12]'"), (None, "dali-cuda12")],
)
def test_dali_backend_without_dali_names_the_extra(monkeypatch, tmp_path, cuda, extra):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    monkeypatch.setattr(torch.version, "cuda", cuda)
    with pytest.raises(SignstreamError) as err:
        make_loader(tmp_path, backend="dali")
    message = str(err.value)
    assert "\n" not in message and "pip install 'signstream[dali-cuda" in message and extra in message
    if cuda is None:  # unknown CUDA: both extras are named
        assert "dali-cuda13" in message


# The tiny chain a CPU user runs, with DALI blocked: synth -> pack -> loader (auto = PyAV on the CPU)
# -> feature extraction through the command line; the DALI backend must answer with the extra.
CHAIN = """
import sys
sys.modules["nvidia.dali"] = None  # DALI not installed, as far as any import can tell
from pathlib import Path
from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.tools.cli import main
from signstream.tools.pack import pack_corpus
from signstream.tools.synth import make_corpus

out = Path(sys.argv[1])
root = make_corpus(out / "synth", train=2, dev=1, test=1, vocab=4, height=48, width=64)
pack_corpus("phoenix2014", out / "packed", root=root, workers=1, progress=False, max_samples=4)
batch = next(iter(make_loader(out / "packed" / "train", batch_size=2, transform=Transform(size=32, max_frames=8))))
assert batch.video.ndim == 5 and batch.video.shape[1] == 3, batch.video.shape
args = ["backbone=s3d", "stop_after=2", "image_size=32", "backend=auto", "num_workers=0", "writers=npy"]
assert main(["extract_features", f"shards={out / 'packed'}", f"out={out / 'feats'}", *args, "progress=false"]) == 0
try:
    make_loader(out / "packed" / "train", backend="dali")
    raise SystemExit("backend='dali' worked without DALI")
except SignstreamError as exc:
    print("DALI:", exc)
assert not [m for m, v in sys.modules.items() if m.startswith("nvidia.dali") and v is not None]
print("features:", len(list((out / "feats").rglob("*.npy"))))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.mark.slow
def test_cpu_chain_runs_with_dali_blocked(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CHAIN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "pip install 'signstream[dali-cuda" in proc.stdout
    assert int(proc.stdout.split("features:")[1]) >= 4  # every video of every split


def _shadow_site(site: Path, shadow: Path) -> None:
    """Links to everything installed beside this interpreter, except signstream itself and DALI."""
    shadow.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("signstream", "__editable__", "nvidia_dali")) or name.endswith(".pth"):
            continue
        if name == "nvidia" and entry.is_dir():  # a namespace of CUDA libraries: keep all but DALI
            (shadow / entry.name).mkdir()
            for sub in entry.iterdir():
                if sub.name != "dali":
                    (shadow / entry.name / sub.name).symlink_to(sub)
            continue
        (shadow / entry.name).symlink_to(entry)


def _copy_source(dst: Path) -> None:
    """The files the build reads: pyproject, README, the root package and the package folders."""
    import shutil

    dst.mkdir()
    for name in ("pyproject.toml", "README.md", *(p.name for p in ROOT.glob("*.py"))):
        shutil.copy2(ROOT / name, dst / name)
    for folder in PACKAGE_DIRS:
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "results", "*.pyc"))


SMOKE = """
import importlib.util, sys
from pathlib import Path
import torch
import signstream
from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.models import create_model
from signstream.tools.pack import pack_corpus
from signstream.tools.synth import make_corpus

out = Path(sys.argv[1])
assert importlib.util.find_spec("nvidia.dali") is None
root = make_corpus(out / "synth", train=2, dev=1, test=1, vocab=4, height=48, width=64)
pack_corpus("phoenix2014", out / "packed", root=root, workers=1, progress=False, max_samples=4)
batch = next(iter(make_loader(out / "packed" / "train", batch_size=2, transform=Transform(size=32, max_frames=8))))
with torch.no_grad():
    feats = create_model("s3d", stop_after=2).eval().forward_features(batch.video)
assert feats.shape[0] == batch.video.shape[0] and torch.isfinite(feats).all()
try:
    make_loader(out / "packed" / "train", backend="dali")
except SignstreamError as exc:
    print("DALI:", exc)
print("signstream:", signstream.__file__)
print("torch:", torch.__version__, torch.__file__)
"""


@pytest.mark.slow
def test_no_deps_install_beside_an_existing_torch(tmp_path):
    """``pip install --no-deps`` into an environment that already has torch, without DALI.

    Limit: only one torch is installed here, so the scratch environment reuses it (through a
    path file pointing at links to this interpreter's packages, DALI left out) instead of
    holding another release; other releases are checked against the ranges by number in
    test_ranges_accept_the_pinned_set_and_other_releases. Offline: pip never reads an index.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    if not (site / "torch").is_dir() or not (site / "setuptools").is_dir() or not (site / "pip").is_dir():
        pytest.skip("torch, setuptools and pip must be installed in this interpreter's site-packages")
    torch_record = next(site.glob("torch-*.dist-info")) / "RECORD"
    before = torch_record.stat().st_mtime_ns
    venv, src = tmp_path / "venv", tmp_path / "src"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    scratch_site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    _shadow_site(site, tmp_path / "shadow")
    (scratch_site / "existing-env.pth").write_text(f"{tmp_path / 'shadow'}\n", encoding="utf-8")
    _copy_source(src)
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "install", "--no-index"]
    pip += ["--no-build-isolation", "--no-cache-dir"]

    def run(cmd, **kw):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(), **kw)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    # with its dependencies resolved, pip finds everything already there: the ranges accept this torch
    dry = run([*pip, "--dry-run", str(src)])
    assert "Would install signstream-0.1.0" in dry.splitlines()[-1], dry[-2000:]
    done = run([*pip, "--no-deps", str(src)])
    assert done.strip().splitlines()[-1] == "Successfully installed signstream-0.1.0", done[-2000:]
    installed = sorted(p.name for p in scratch_site.iterdir() if p.name != "__pycache__")
    assert installed == ["existing-env.pth", "signstream", "signstream-0.1.0.dist-info"]
    assert torch_record.stat().st_mtime_ns == before  # pip did not touch torch

    smoke = run([python, "-c", textwrap.dedent(SMOKE), str(tmp_path / "smoke")], cwd=tmp_path)
    assert f"signstream: {scratch_site / 'signstream'}" in smoke  # the installed copy, not this checkout
    assert f"torch: {torch.__version__}" in smoke
    assert "pip install 'signstream[dali-cuda" in smoke
