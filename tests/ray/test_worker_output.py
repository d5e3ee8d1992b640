"""`palm run`'s terminal shows palm's warnings from the workers; every line goes to the log.

The batches are what Ray's driver hands its printer (ray/_private/worker.py): one dict per
worker and batch, as received from the log stream and the raylet's error reports.
"""

import io
import logging

from palm_platform.ray.worker import configure_logging
from palm_platform.ray.worker_output import LOG_FILE, WorkerOutput

DIED = ("A worker died or was killed while executing a task by an unexpected system error. To "
        "troubleshoot the problem, check the logs for the dead worker. Lease ID: 0b00 Worker ID: "
        "e810 Node ID: e9d6 Worker IP address: 192.0.2.2 Worker port: 45581 Worker PID: 10427 "
        "Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a "
        "connection error code 2. End of file. Some common causes include: (1) the process was "
        "killed by the OOM killer due to high memory usage, (2) ray stop --force was called")


def batch(pid: int, *lines: str, is_err: bool = True) -> dict:
    return {"pid": pid, "ip": "192.0.2.2", "actor_name": "RayTrainWorker", "is_err": is_err,
            "lines": list(lines), "localhost": "192.0.2.2"}


def worker_line(level: str, name: str, message: str) -> str:
    """A line as configure_logging formats it in a worker."""
    stream = io.StringIO()
    configure_logging()
    handler = logging.getLogger("palm").handlers[0]
    record = logging.LogRecord(name, getattr(logging, level), __file__, 1, message, (), None)
    handler.setStream(stream)
    handler.handle(record)
    return stream.getvalue().rstrip("\n")


def test_terminal_gets_palm_warnings_as_messages_and_the_log_gets_everything(tmp_path):
    terminal = io.StringIO()
    output = WorkerOutput(tmp_path / "logs", stream=terminal)
    output.handle(
        batch(
            11,
            worker_line("INFO", "palm", "step 24/60 loss 5.6483 tokens/s 1350 mfu 0.53%"),
            worker_line(
                "INFO", "palm_platform.checkpoint.checkpointer", "checkpoint step 20 committed"
            ),
            worker_line(
                "WARNING", "palm_platform.supervise.faults", "FAULT step 25 host 1: kill_host"
            ),
            "WARNING:2026-12-04 07:37:10 jax._src.xla_bridge: An NVIDIA GPU may be present",
            "[Gloo] Rank 1 is connected to 3 peer ranks. Expected number of connected peer ranks "
            "is : 3",
        )
    )
    output.close()
    assert terminal.getvalue().splitlines() == ["FAULT step 25 host 1: kill_host"]
    logged = (tmp_path / "logs" / LOG_FILE).read_text().splitlines()
    assert len(logged) == 4 and all(ln.startswith("(RayTrainWorker pid=11, ip=192.0.2.2) ")
                                    for ln in logged), logged
    assert "step 24/60 loss" in logged[0] and "NVIDIA GPU" in logged[3]
    assert "\x1b[" not in terminal.getvalue() + "".join(logged)  # no colour anywhere


def test_the_same_warning_from_every_host_is_printed_once(tmp_path):
    terminal = io.StringIO()
    output = WorkerOutput(tmp_path, stream=terminal)
    line = worker_line("WARNING", "palm_platform.supervise.faults",
                       "FAULT step 45: poisoning global sequences [960, 1024) (2 batches)")
    for pid in (11, 12, 13, 14):
        output.handle(batch(pid, line))
    assert terminal.getvalue().count("poisoning global sequences") == 1


def test_a_dead_worker_is_one_cause_for_the_restart_sentence_not_a_paragraph(tmp_path):
    terminal = io.StringIO()
    output = WorkerOutput(tmp_path, stream=terminal)
    output.handle(batch(10427, worker_line("WARNING", "palm_platform.supervise.faults",
                                           "FAULT step 25 host 1/4: kill_host")))
    output.handle({"pid": "raylet", "is_err": False, "lines": [DIED]})
    assert "A worker died" not in terminal.getvalue()
    assert output.restart_cause() == ("host 1/4 (worker pid 10427) died: Worker unexpectedly "
                                      "exits with a connection error code 2. End of file")
    assert output.restart_cause() is None  # said once, with the restart it caused
    assert "(raylet) A worker died" in (tmp_path / LOG_FILE).read_text()
    # The killed host takes the others down with the same error: one clause names them all.
    output.handle(batch(10431, worker_line("WARNING", "palm", "host 2/4: lost a peer")))
    for pid in (10427, 10430, 10431):
        output.handle({"pid": "raylet", "is_err": False,
                       "lines": [DIED.replace("10427", str(pid))]})
    assert output.restart_cause() == (
        "host 1/4 (worker pid 10427), worker pid 10430 and host 2/4 (worker pid 10431) died: "
        "Worker unexpectedly exits with a connection error code 2. End of file")


def test_verbose_prints_what_ray_prints_and_still_logs(tmp_path):
    terminal, printed = io.StringIO(), []
    output = WorkerOutput(tmp_path, verbose=True, stream=terminal)
    data = batch(11, worker_line("WARNING", "palm", "host 0/4: lost a peer during step 25"),
                 "I0000 an XLA line")
    output.handle(data, False, ray_print=lambda d, ignore: printed.append(d["lines"]))
    assert printed == [data["lines"]] and terminal.getvalue() == ""
    assert "an XLA line" in (tmp_path / LOG_FILE).read_text()


def test_ray_hands_both_of_its_streams_to_the_handler():
    from ray._private import worker as ray_worker

    from palm_platform.compat.ray import route_worker_output

    before = ray_worker.print_to_stdstream
    seen = []
    try:
        route_worker_output(lambda data, ignore_prefix, ray_print: seen.append((data, ray_print)))
        # listen_error_messages calls the module's function by name; ray.init binds it too.
        ray_worker.print_to_stdstream({"pid": "raylet", "lines": [DIED], "is_err": False},
                                      ignore_prefix=False)
    finally:
        ray_worker.print_to_stdstream = before
    assert len(seen) == 1 and seen[0][0]["pid"] == "raylet"
    assert seen[0][1] is before  # Ray's printer, for --verbose


def test_the_restart_sentence_says_what_died(tmp_path):
    from palm_platform.metrics.status import Progress

    output = WorkerOutput(tmp_path, stream=io.StringIO())
    output.handle(batch(10427, worker_line("WARNING", "palm_platform.supervise.faults",
                                           "FAULT step 25 host 1: kill_host")))
    output.handle({"pid": "raylet", "is_err": False, "lines": [DIED]})
    progress = Progress(tmp_path, total_steps=60, restart_cause=output.restart_cause)
    restart = {"kind": "restart", "step": 20, "time": 0.0, "attempt": 1}
    assert progress._sentence(restart) == (
        "step 20: worker group restarted (attempt 1), resumed from this step; host 1 (worker pid "
        "10427) died: Worker unexpectedly exits with a connection error code 2. End of file")
    assert progress._sentence(restart).endswith("resumed from this step")  # said once


def test_prepare_json_sends_every_forwarded_worker_line_to_stderr(capsys):
    """`palm data prepare --json`: its stdout is the JSON alone, whatever a worker prints."""
    from ray._private import worker as ray_worker

    from palm_platform.commands.data import _worker_lines_to_stderr

    before = ray_worker.print_to_stdstream
    try:
        _worker_lines_to_stderr()
        ray_worker.print_to_stdstream({"pid": "", "ip": "127.0.0.1", "task_name": None,
                                       "actor_name": None, "is_err": False,
                                       "lines": ["W1204 compiler_backend.cc] a late XLA line"]},
                                      ignore_prefix=False)
    finally:
        ray_worker.print_to_stdstream = before
    out, err = capsys.readouterr()
    assert out == "" and "a late XLA line" in err
