"""A packed job's records cost no work that is not its own (issue 23): what its checkpoints need of
its data config is counted once for the jobs that share it."""

from __future__ import annotations

from hydra.utils import instantiate

from tests.conftest import QUICK, compose_train


def test_the_loaders_are_counted_once_per_data_config_whatever_the_seed(synthetic_data_dir):
    """The fit loop's batch counts in a packed job's checkpoints: its solo run's data module's, for
    every seed, counted once per batch size (at 065fe68 a data module was built for each job)."""
    from mnist_lab.packed.checkpoint import _counted, loader_lengths

    _counted.cache_clear()
    for batch_size in (16, 64):
        for seed in (1, 2, 3):
            cfg = compose_train(
                *QUICK, f"seed={seed}", f"data.batch_size={batch_size}", f"data.data_dir={synthetic_data_dir}"
            )
            datamodule = instantiate(cfg.data)
            datamodule.setup("fit")
            assert loader_lengths(cfg.data) == (len(datamodule.train_dataloader()), len(datamodule.val_dataloader()))
    assert _counted.cache_info().misses == 2
