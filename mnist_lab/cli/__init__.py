"""What the commands share: settings checked before anything runs (``config_checks``), Hydra's
errors as one sentence (``hydra_errors``), the console's lines (``console``), exit codes and
SIGTERM handled as Ctrl-C (``exit_codes``), and a Ctrl-C during start-up as one line
(``quiet_interrupt``)."""
