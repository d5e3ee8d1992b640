"""Where data and checkpoints live: gs:// pre-flight checks, the local GCS emulator and its
variables."""
