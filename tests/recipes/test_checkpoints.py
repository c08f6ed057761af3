"""Tests for ``recipes/checkpoints.py``: which epoch is best, which checkpoint resumes."""

from __future__ import annotations

from signstream.recipes import checkpoints


def test_best_is_the_lowest_dev_wer_whatever_the_train_loss():
    history = [{"train_loss": 5.0, "dev_wer": 40.0}, {"train_loss": 1.0, "dev_wer": 45.0}]
    assert not checkpoints.is_best(history)
    assert checkpoints.is_best(history[:1])
    assert checkpoints.is_best([*history, {"train_loss": 9.0, "dev_wer": 40.0}])  # ties: the later epoch


def test_without_a_dev_split_the_latest_epoch_is_kept():
    assert checkpoints.is_best([{"train_loss": 1.0}, {"train_loss": 2.0}])


def test_latest_skips_checkpoints_without_their_done_marker_and_orders_by_epoch(tmp_path):
    root = tmp_path / "checkpoints"
    for epoch, done in ((9, True), (10, True), (11, False)):
        (root / f"epoch_{epoch:03d}").mkdir(parents=True)
        if done:
            (root / f"epoch_{epoch:03d}" / "DONE").write_text("complete\n")
    (root / "notes").mkdir()
    assert checkpoints.latest(tmp_path).name == "epoch_010"
    assert sorted(p.name for p in checkpoints.checkpoint_dirs(tmp_path)) == ["epoch_009", "epoch_010", "epoch_011"]
    assert checkpoints.latest(tmp_path / "nothing") is None
