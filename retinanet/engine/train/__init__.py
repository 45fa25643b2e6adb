"""Training: the loop (``loop.train``), its set-up and checkpointed state (``setup``), the start
weights (``start``), optimizer/schedule/EMA/RNG (``optim``), the on-device step meter (``meter``)
and the run's log and result files (``report``)."""
