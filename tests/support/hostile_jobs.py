"""Hostile and malformed job files, as (name, text) pairs built from the local job.

Shared by tests/job/test_job_hostile.py (each must fail fast, small, with one message and exit
2) and benchmarks/bench_hostile_jobs.py (which prints time and memory per case).
"""

from __future__ import annotations

from tests.support.paths import ROOT

BASE = (ROOT / "jobs" / "local-cpu.yaml").read_text()


def _laughs(levels: int = 9) -> str:
    """The "billion laughs": 9 levels of 9 aliases = 9^9 leaves from ~1 KB of YAML."""
    lines = ['laughs: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"laughs{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _replace(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def cases() -> dict[str, tuple[str | bytes, str]]:
    """name -> (file content, words the one-line message must contain)."""
    return {
        "billion_laughs": (BASE + _laughs(), "aliases expand"),
        "duplicate_key": (
            _replace("  steps: 60\n", "  steps: 60\n  seq_len: 128\n  steps: 5\n"),
            "duplicate key 'steps'",
        ),
        "huge_file": (BASE + "# " + "x" * (40 << 20) + "\n", "larger than"),
        "deep_nesting": (BASE + "deep: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper"),
        "long_value": (_replace("name: local-cpu", "name: " + "x" * 200_000 + "!"), "field name"),
        "wrong_type": (_replace("steps: 60", "steps: sixty"), "field train.steps"),
        "section_not_mapping": (_replace("mesh:\n  model: 2 ", "mesh: [2, 2]\n# "), "field mesh"),
        "override_wrong_type": (
            _replace("preset: palm-tiny", "preset: palm-tiny\n  overrides: {num_layers: two}"),
            "model.overrides",
        ),
        "cross_field_mesh": (_replace("model: 2 ", "model: 3 "), "mesh.model"),
        "cross_field_batch": (
            _replace("{sequences: 16, until_step: 30}", "{sequences: 12, until_step: 30}"),
            "train.batch_schedule",
        ),
        "python_tag": (
            BASE + "evil: !!python/object/apply:os.system ['echo pwned']\n",
            "not allowed",
        ),
        "not_utf8": (b"name: \xff\xfe\x00bad\n" + BASE.encode(), "UTF-8"),
        "recursive_alias": (BASE + "loop: &loop [1, *loop]\n", "recursive alias"),
        "many_problems": (
            BASE.replace("steps: 60", "steps: [1, 2]")
            .replace("seq_len: 128", "seq_len: x")
            .replace("pods: 2", "pods: -1")
            .replace("model: 2 ", "model: 0 ")
            .replace("seed: 0", "seed: -5")
            .replace("every_steps: 10", "every_steps: 0"),
            "more",
        ),
        "not_a_mapping": ("- just\n- a\n- list\n", "must be a YAML mapping"),
    }
