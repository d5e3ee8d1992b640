"""Subcommands that compose several layers (the top of the package layers, beside cli.py).

A command lives here when it needs packages from more than one layer: `palm data` reads a
job (job/), a run's ledger (supervise/), connects to the palm cluster (cluster/) and runs the
prepare job (data/), which itself imports none of them.
"""
