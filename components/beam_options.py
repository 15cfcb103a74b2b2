"""Beam pipeline options used in more than one place."""

# DirectRunner on every core: multi-processing workers, one per core (0 = as many as cores).
DIRECT_RUNNER_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")

# One process, no workers: for tests and small jobs where worker start-up costs more than it saves.
IN_PROCESS_ARGS = ("--direct_running_mode=in_memory",)
