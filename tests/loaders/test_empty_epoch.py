"""Zero samples is never success: an epoch whose every sample failed raises one line, unless the caller opts out."""

from __future__ import annotations

import pytest

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from tests.hostile.test_recipes_zero_videos import undecodable


@pytest.fixture(scope="module")
def broken(packed, tmp_path_factory):
    return undecodable(packed, tmp_path_factory.mktemp("broken") / "packed", splits=("dev",))


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_an_eval_epoch_with_every_sample_undecodable_raises_naming_the_first_reasons(broken, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    loader = make_loader(
        broken / "dev",
        backend=backend,
        transform=Transform(size=32),
        num_workers=1,
        handler="skip",
        rank=0,
        world_size=1,
    )
    with pytest.raises(SignstreamError) as err:
        list(loader)
    line = str(err.value)
    assert "\n" not in line and "no readable sample in epoch 0" in line
    assert "3 skipped" in line and "dev-000000.tar" in line and line.count("(") >= 3


def test_allow_empty_ends_the_epoch_quietly_with_the_skips_in_stats(broken):
    loader = make_loader(
        broken / "dev",
        backend="pyav",
        transform=Transform(size=32),
        num_workers=0,
        handler="skip",
        rank=0,
        world_size=1,
        allow_empty=True,
    )
    assert list(loader) == [] and len(loader.stats.skipped) == 3


def test_a_rank_with_nothing_to_read_is_not_an_error(packed):
    # more ranks than samples: rank 0 of 6 has no share of the 3 videos, nothing failed
    loader = make_loader(
        packed / "dev", backend="pyav", transform=Transform(size=32), num_workers=0, rank=0, world_size=6
    )
    assert list(loader) == [] and not loader.stats.skipped
