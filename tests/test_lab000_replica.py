"""benchmarks/lab000_replica.py: lab 000's seeded loop gives the same numbers on every run (the
docs compare them with the lab's digit by digit), and it trains."""

from __future__ import annotations

from benchmarks import lab000_replica


def test_the_replica_repeats_its_numbers_exactly_and_learns(synthetic_data_dir, capsys):
    args = ["--data", str(synthetic_data_dir), "--lr", "0.1", "--gamma", "0.8", "--epochs", "2"]
    first, again = lab000_replica.main(args), lab000_replica.main(args)
    assert first == again
    assert first[1]["test_acc"] > 50 and first[1]["train_loss"] < first[0]["train_loss"]
    shuffled = lab000_replica.main([*args, "--shuffle"])
    assert shuffled[0]["last_batch_loss"] != first[0]["last_batch_loss"]  # another batch order
    assert len(capsys.readouterr().out.splitlines()) == 6  # one line per epoch, as the lab's log
