"""What the commands share: settings checked before anything runs (``config_checks``, ``learning_checks``, their
``ConfigError`` in ``config_error``), an out-of-memory error as what to lower (``out_of_memory``), Hydra's
errors as one sentence (``hydra_errors``), the console's lines (``console``), exit codes and
SIGTERM handled as Ctrl-C (``exit_codes``), a Ctrl-C during start-up as one line
(``quiet_interrupt``), an exit without the interpreter's last garbage collection (``quick_exit``);
and for sweeps: each job's config composed once (``sweep_configs``), where a sweep's time went
(``sweep_clock``), one sweep at a time in a dir (``sweep_lock``), and a sweep that never started
leaving nothing behind (``sweep_start``)."""
