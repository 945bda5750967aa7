"""One experiment: what ``python -m mnist_lab.train`` runs for each job.

- ``experiment``: the run from start to end: checks, run dir, Lightning ``Trainer``, fit, test,
  ``metrics.json``.
- ``classifier``: the ``LightningModule`` (the net, its loss, optimizer and schedule, metrics).
- ``step``, ``cuda_graph``, ``step_factory``: the training step (one body, ``EagerStep``), that
  step captured as a CUDA graph, and which one a run (or a pack) takes and why the graph is off.
- ``epoch_log``: the per-epoch history and the divergence check (a pack's too); ``schedules``: learning-rate
  schedules stepped per batch or per epoch; ``evaluation``: a net's test loss, accuracy and
  confusion matrix; ``process_group_exit``: DDP processes leave cleanly.
"""
