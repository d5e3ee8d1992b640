"""The profiler: trace chosen steps of a running job on chosen hosts, then say where each step's
time went (`palm profile`, commands/profile.py).

    config.py    the job file's `profile:` section (fixed steps, the live-request cadence)
    request.py   how a live request reaches the train loop (Ray's GCS KV store or a file)
    capture.py   the train-loop hook: agree the first traced step, jax.profiler on/off
    trace.py     a host's Perfetto trace -> time per category (compute, collectives, gaps)
"""
