"""Packed sweeps: the jobs of a ``--multirun`` trained together as one stacked model
(docs/packed_sweeps.md says what packs, what is proven and how fast it is).

How a sweep runs, top to bottom:

- ``launch``: ``PackedLaunch``, what ``hydra/launcher=packed`` runs (the Launcher class itself
  is in ``hydra_plugins/mnist_lab_packed_launcher/``): each job's config composed, the jobs
  split into units, each unit run; ``units``: a unit (a pack, or one job alone) and how a
  worker process (submitit, Ray, ``gpu_workers``) runs one; ``pack_run``: one pack built,
  proved, resumed, trained and its jobs' ends said (or its jobs alone, and why).
- ``groups``: which jobs can pack (``why_solo``) and which share a pack (``pack_key``);
  ``size_probe``: how many jobs a pack holds (``pack_size=auto``: on the CPU by the operations
  of a job's step, on a GPU by a timing probe).
- ``packable``: whether a job's network has a packed form (what it is, not what it is called);
  ``check``: the proof every pack gives before it trains, one step against each job's own model.
- ``training``: one pack's epoch loop (``pack_epochs``, which the tests drive too) and its jobs'
  records (``train_pack``); ``job``: one packed job recorded through the solo run's code
  (run dir, ``metrics.json``, trackers, test); ``images``: its TensorBoard images.
- ``pack``: ``Pack``, M jobs built as their solo runs build them, trained as one model.

The model, piece by piece:

- ``layers``: each layer of ``models.py`` in packed form (batched matmuls, grouped convolutions,
  batch norm, per-job dropout); ``nets``: ``PackedNet``, M solo nets as one module built from
  them, with per-job dropout streams; ``copy_into``/``load_from`` move a job's weights out and in.
- ``step``: the packed training step (its one body), its per-job loss and batches; ``graph``:
  one call of that step captured as a CUDA graph on a GPU.
- ``optimizer``: ``PackedOptimizer``, each hyperparameter one value per job; ``updates``: its
  update written out with torch's formulas where grouping cannot be used; ``schedules``: each
  job's own torch scheduler, stepped as its solo run steps it.
- ``checkpoint``: each job's ``best.ckpt``/``last.ckpt`` as its solo run writes them;
  ``resume``: the inverse, a job's ``last.ckpt`` back into its slice of a pack.
"""
