"""Events as the terminal shows them: one sentence, rounded numbers."""

import re

from palm_platform.metrics.events import describe_event


def test_goodput_event_is_a_percentage_with_seconds_to_one_decimal():
    line = describe_event({"kind": "goodput", "step": 60, "time": 1.0, "goodput": 0.30961234,
                           "wall_s": 290.41234, "productive_s": 89.91111, "badput_data_s": 0.06159,
                           "badput_compile_s": 82.4321, "badput_eval_s": 0.0,
                           "cache_hits": 8, "cache_misses": 1})
    assert line == ("step 60: goodput 31.0% (89.9 s productive of 290.4 s); badput compile 82.4 s, "
                    "data 0.1 s; compilation cache 8 hits, 1 misses")
    assert not re.search(r"\d\.\d{3,}", line)


def test_checkpoint_saved_says_how_long_the_loop_waited():
    line = describe_event({"kind": "checkpoint_saved", "step": 20, "time": 1.0,
                           "blocked_s": 0.38234})
    assert line == "step 20: checkpoint saved (the loop waited 0.38 s)"


def test_the_progress_view_folds_checkpoints_into_the_bar(tmp_path, capsys):
    import json
    import threading
    import time

    from palm_platform.metrics.status import Progress

    records = [{"kind": "step", "step": 10, "time": 1.0, "loss": 5.4321, "tokens_per_s": 1889.4},
               {"kind": "checkpoint_saved", "step": 10, "time": 1.0, "blocked_s": 0.02},
               {"kind": "goodput", "step": 10, "time": 1.0, "goodput": 0.5, "wall_s": 20.0,
                "productive_s": 10.0, "badput_compile_s": 10.0}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.touch()
    stop = threading.Event()
    follower = threading.Thread(target=Progress(tmp_path, total_steps=20).follow, args=(stop,))
    follower.start()
    time.sleep(1.0)  # the view shows what is written after it starts
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    threading.Timer(2.5, stop.set).start()
    follower.join(timeout=10)
    out = capsys.readouterr().out
    assert "checkpoint saved" not in out and "checkpoint 10" in out
    assert "step 10: goodput 50.0% (10.0 s productive of 20.0 s); badput compile 10.0 s" in out


def test_startup_and_restore_events_are_sentences_with_seconds_to_one_decimal():
    line = describe_event({"kind": "startup", "step": 30, "time": 1.0, "attempt": 1,
                           "train_fn_entered_s": 7.54, "imported_s": 1.321, "trainer_init_s": 0.05,
                           "trainer_ready_s": 0.75, "restored_s": 0.61})
    assert line == ("step 30: started (attempt 1): process to train function 7.5 s, imports 1.3 s, "
                    "set-up 0.1 s, trainer built 0.8 s, restore or init 0.6 s")
    restored = describe_event({"kind": "checkpoint_restored", "step": 30, "time": 1.0,
                               "attempt": 1})
    assert restored == "step 30: restored the checkpoint (attempt 1)"


def test_launch_and_data_quality_events_are_sentences_without_empty_fields():
    start = describe_event({"kind": "start", "step": 0, "time": 1.0, "attempt": 0, "hosts": 4,
                            "pods": 2, "devices": 16, "cross_pod_bytes_per_step": 2426368})
    assert start == ("step 0: launched (attempt 0) on 4 host(s), 2 pod(s), 16 devices; the "
                     "cross-pod gradient exchange moves 2.43 MB per step")
    one_pod = describe_event({"kind": "start", "step": 0, "time": 1.0, "attempt": 1, "hosts": 1,
                              "pods": 1, "devices": 4, "cross_pod_bytes_per_step": 0})
    assert one_pod == "step 0: launched (attempt 1) on 1 host(s), 1 pod(s), 4 devices"
    clean = describe_event({"kind": "data_quality", "step": 0, "time": 1.0, "bad_records": 0,
                            "documents": 1204, "bad_by_source": {}, "first_bad": []})
    assert clean == "step 0: data: 1,204 documents, no bad records"
    bad = describe_event({"kind": "data_quality", "step": 0, "time": 1.0, "bad_records": 2,
                          "documents": 10, "bad_by_source": {"docs": {"bad_json": 2}},
                          "first_bad": ["a.jsonl:7 bad_json"]})
    assert bad == ("step 0: data: 2 bad records of 10 documents (docs: bad_json 2); "
                   "first: a.jsonl:7 bad_json")


def test_a_restore_says_which_tier_it_read_and_how_much():
    line = describe_event({"kind": "checkpoint_restored", "step": 8, "attempt": 1,
                           "tier": "peer", "bytes_local": 2_000_000, "bytes_peer": 1_500_000,
                           "bytes_persistent": 0})
    assert line == ("step 8: restored the checkpoint (attempt 1) from the RAM of other hosts "
                    "(local 2.0 MB, peer 1.5 MB, persistent 0.0 MB)")
    passed_over = describe_event({
        "kind": "checkpoint_restored", "step": 20, "attempt": 1, "tier": "persistent",
        "bytes_persistent": 6_800_000, "newer_ram_step": 24,
        "why_not_ram": "RAM step 24 was incomplete (host 1 (pod-0-w1) lacks its blocks of "
                       "step 24; no peer holds them)"})
    assert passed_over == (
        "step 20: restored the checkpoint (attempt 1) from persistent storage (local 0.0 MB, "
        "peer 0.0 MB, persistent 6.8 MB): RAM step 24 was incomplete (host 1 (pod-0-w1) "
        "lacks its blocks of step 24; no peer holds them)")
    assert describe_event({"kind": "checkpoint_saved", "step": 4, "tier": "local",
                           "blocked_s": 0.004}) == \
        "step 4: checkpoint saved in RAM (the loop waited 0.00 s)"
