"""Test set-up: CPU only, with 8 fake devices so sharded code runs on one machine.

These variables must be set before JAX is imported anywhere, which is why they live here.
Tests that need several JAX *processes* start subprocesses with their own environment.
"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
