"""Tests for the help texts: `signstream --help` and each recipe's preset listing."""

from __future__ import annotations

import re

import pytest

from signstream.recipes.config import PRESETS, list_presets
from signstream.tools.cli import RECIPES, SUBCOMMANDS, main

RECIPE_PRESET_PREFIX = {"finetune_ctc": "finetune_ctc-", "extract_features": "extract-", "train_head": "train_head-"}


def test_top_level_help_gives_every_subcommand_a_one_line_description(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "see `signstream" not in out
    for name in [*SUBCOMMANDS, *RECIPES]:
        line = next((ln for ln in out.splitlines() if re.match(rf"\s+{name}\s", ln)), None)
        assert line is not None, f"{name} is not on a line of its own with its description"
        assert len(line.split(None, 1)[1].split()) >= 5, f"{name}: description too short: {line!r}"


def test_top_level_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from signstream.tools.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_help_lists_its_shipped_presets_with_their_first_header_line(recipe, capsys):
    with pytest.raises(SystemExit) as exc:
        main([recipe, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    shipped = sorted(p.name for p in PRESETS.glob(RECIPE_PRESET_PREFIX[recipe] + "*.yaml"))
    assert shipped, "every recipe ships at least one preset"
    for name in shipped:
        header = PRESETS.joinpath(name).read_text().splitlines()[0].lstrip("#").strip()
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(header)}$", out, re.M), name
    others = [p.name for p in PRESETS.glob("*.yaml") if p.name not in shipped]
    assert not any(o in out for o in others), "a preset of another recipe is listed"


def test_list_presets_matches_by_recipe_name_or_its_first_word(tmp_path):
    (tmp_path / "extract-a.yaml").write_text("# Extract things.\nshards: x\n")
    (tmp_path / "train_head-b.yaml").write_text("batch_size: 2\n")
    (tmp_path / "other-c.yaml").write_text("# Not ours.\n")
    assert list_presets("extract_features", tmp_path) == [("extract-a.yaml", "Extract things.")]
    assert list_presets("train_head", tmp_path) == [("train_head-b.yaml", "")]


def test_demo_help_describes_the_demo(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--epochs" in out and "synthetic corpus" in out
