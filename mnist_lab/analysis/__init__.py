"""A sweep's report: job folders named by their overrides and the report written at the end of
every ``--multirun`` (``sweep``); the table of jobs and its files (``summary``); points run with
several seeds compared with the best, with intervals and Holm-adjusted p (``replicates``, its
statistics in ``findings``, its tables and figures in ``replicates_report``); the report's
figures (``figures``).
"""
