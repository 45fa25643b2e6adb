"""What every stage runs on: models from weights files (``checkpoint``), the autocast precision
(``precision``), process groups and collectives (``distributed``) and the run folder (``run_dir``)."""
