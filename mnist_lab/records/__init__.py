"""What a run leaves on disk, and how it is read back.

- ``run_dir``: claiming a run dir (a new run, a resume, a sweep job) and its ``.hydra/`` files.
- ``run_record``, ``metrics_file``: ``metrics.json``, kept current while a run trains, written
  atomically as JSON without NaN.
- ``run_dir_checkpoint``: ``best.ckpt``/``last.ckpt`` inside the run dir, written atomically.
- ``checkpoint_checks``: a checkpoint to resume from, checked before it is used;
  ``checkpoint_loading``: a net back from a checkpoint for ``evaluate``/``predict``, safely.
- ``lightning_internals``: every private name of Lightning the package relies on (counting its own
  optimizer steps, ``last.ckpt`` after every epoch, a packed job's checkpoint), in one place.
- ``atomic_files``: write through a temporary name, then rename.
"""
