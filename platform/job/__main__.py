"""`python -m palm_platform.job JOB.yaml`: validate a job file without running it (exit 2 if
it is bad, with the message `palm run` would print)."""

import sys

from palm_platform.job import load_job_or_exit

load_job_or_exit(sys.argv[1])
print(f"{sys.argv[1]}: valid")
