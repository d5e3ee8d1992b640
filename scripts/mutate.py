"""Mutation testing of the core modules: plant one small bug at a time, run the fast tests
that cover that module, and count the bugs they catch.

    flock /tmp/palm-heavy.lock .venv/bin/python scripts/mutate.py            # every module
    .venv/bin/python scripts/mutate.py --module supervise/spike.py --max 40 # one, more mutants
    .venv/bin/python scripts/mutate.py --list                               # mutants, no runs

Not in CI (it runs the tests once per mutant): run it before closing an issue that touches
these modules. It prints, per module, the kill rate of the tests that existed before issue 19
("before") and of all of them ("after"), and every surviving mutant (file:line, what changed).

Why a small hand-written mutator rather than mutmut or cosmic-ray: the package is mapped by
setuptools' package-dir (`palm_platform = "platform"`, an editable install), which mutmut 3
does not follow (it copies the sources to ./mutants and imports them from there, while the
editable finder keeps importing the originals), and both tools run tests in forked workers,
which JAX (threads, 8 fake devices, compilation caches) does not survive well. Here each
mutant is a copy of `platform/` with one file changed, put first on PYTHONPATH (the default
path finder runs before the editable-install finder), and pytest runs in a fresh process, so
the working tree is never touched and an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module (under platform/) -> (tests that existed before issue 19, tests added by it).
# Fast tests only; each list is what covers that module's behaviour.
STEP_OLD = ["tests/train/test_train_step.py"]
STEP_NEW = [
    "tests/train/test_train_step_reference.py::test_two_pod_step_gradient_is_the_whole_batch_gradient"
]
OPT_OLD = ["tests/train/test_train_step.py::test_learning_rate_is_constant_then_inverse_sqrt",
           "tests/train/test_train_step.py::test_weight_decay_is_lr_squared",
           "tests/train/test_train_step.py::test_update_is_clipped_and_scaled_by_parameter_rms"]
OPT_NEW = [
    "tests/train/test_train_step_reference.py::test_optimizer_clips_the_global_norm_before_adafactor",
    "tests/train/test_train_step_reference.py::test_optimizer_leaves_a_gradient_under_the_limit_alone",
    "tests/train/test_train_step_reference.py::test_optimizer_follows_the_recipe_written_in_numpy",
]
SUPERVISE_OLD = ["tests/supervise/test_supervise_spike.py",
                 "tests/supervise/test_supervise_rollback.py",
                 "tests/supervise/test_supervise_ledger.py",
                 "tests/supervise/test_supervise_faults.py",
                 "tests/metrics/test_metrics_goodput.py",
                 "tests/supervise/test_supervise_watchdog.py"]
SUPERVISE_NEW = ["tests/supervise/test_supervise_spike_boundary.py",
                 "tests/supervise/test_skip_ranges.py"]
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "train/step.py": (STEP_OLD, STEP_NEW),
    "train/optimizer.py": (OPT_OLD, OPT_NEW),
    # No fast test used the check before issue 19 (only the slow loop test, which sees True).
    "train/consistency.py": ([], ["tests/train/test_train_consistency.py"]),
    "supervise/spike.py": (
        ["tests/supervise/test_supervise_spike.py"],
        ["tests/supervise/test_supervise_spike_boundary.py"],
    ),
    "supervise/positions.py": (
        ["tests/supervise/test_supervise_faults.py", "tests/supervise/test_supervise_rollback.py"],
        ["tests/supervise/test_skip_ranges.py"],
    ),
    "supervise/rollback.py": (
        ["tests/supervise/test_supervise_rollback.py"],
        ["tests/supervise/test_supervise_ledger_plan.py", *SUPERVISE_NEW],
    ),
    "supervise/ledger.py": (
        ["tests/supervise/test_supervise_ledger.py", "tests/supervise/test_supervise_rollback.py"],
        ["tests/supervise/test_supervise_ledger_plan.py", *SUPERVISE_NEW],
    ),
    "metrics/goodput.py": (
        ["tests/metrics/test_metrics_goodput.py"],
        ["tests/metrics/test_metrics_goodput_edges.py"],
    ),
    "supervise/faults.py": (
        ["tests/supervise/test_supervise_faults.py"],
        [*SUPERVISE_NEW, "tests/supervise/test_faults_multihost.py"],
    ),
    "supervise/watchdog.py": (
        ["tests/supervise/test_supervise_watchdog.py"],
        ["tests/supervise/test_supervise_watchdog_edges.py"],
    ),
    "data/pipeline.py": (["tests/data/test_data_pipeline.py"],
                         ["tests/supervise/test_skip_ranges.py"]),
    # The skip-range arithmetic of pipeline.py and positions.py, one type since issue 15.
    "data/skips.py": (
        [
            "tests/data/test_data_pipeline.py",
            "tests/supervise/test_supervise_faults.py",
            "tests/supervise/test_supervise_rollback.py",
        ],
        ["tests/supervise/test_skip_ranges.py"],
    ),
    "checkpoint/verification.py": (
        ["tests/checkpoint/test_checkpoint_integrity.py"],
        ["tests/checkpoint/test_checkpoint_verify_defaults.py"],
    ),
    # The one save decision (issue 35): each tier's cadence, the last step, a preemption.
    "checkpoint/checkpoints.py": (
        [],
        ["tests/checkpoint/test_local_tier.py::test_the_checkpoints_say_which_tiers_are_due_at_each_step",
         "tests/checkpoint/test_local_tier.py::test_a_preemption_notice_makes_every_tier_due_at_the_agreed_step",
         "tests/checkpoint/test_local_tier.py::"
         "test_a_preempted_save_writes_both_tiers_ram_first_then_waits_for_every_commit",
         "tests/checkpoint/test_local_tier.py::"
         "test_a_rollback_restores_the_persistent_step_and_drops_newer_steps_of_both_tiers"],
    ),
}
# Mutants per module in a default run (a seeded sample): on 2 shared cores a fast test file
# takes 10-20 s, and the step's tests take minutes per mutant. --module M runs --max of M.
DEFAULT_MAX = {
    "train/step.py": 5,
    "supervise/ledger.py": 6,
    "metrics/goodput.py": 6,
    "supervise/faults.py": 6,
    "supervise/watchdog.py": 6,
    "checkpoint/verification.py": 8,
    "checkpoint/checkpoints.py": 8,
}

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
            ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
            ast.Is: ast.IsNot, ast.IsNot: ast.Is}
SWAP_NAME = {"min": "max", "max": "min", "all": "any", "any": "all"}
# None: drop the call (x.astype(t) -> x)
SWAP_METHOD = {"sum": "mean", "mean": "sum", "astype": None}


@dataclasses.dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # the index-th mutation point of the module, in walk order
    line: int
    description: str


def _skipped_lines(tree: ast.Module) -> set[int]:
    """Lines not worth mutating: docstrings, logging, raise messages, TYPE_CHECKING imports."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("log", "logger")
        ):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, ast.JoinedStr):  # messages
            skip.update(range(node.lineno, node.end_lineno + 1))
    return skip


class _Mutator(ast.NodeTransformer):
    """Walks the tree; at mutation point `target` (or every point, when listing) mutates."""

    def __init__(self, target: int | None, skip: set[int]):
        self.target, self.skip, self.count = target, skip, 0
        self.points: list[tuple[int, str]] = []

    def _point(self, node: ast.AST, description: str) -> bool:
        if getattr(node, "lineno", None) in self.skip:
            return False
        self.points.append((node.lineno, description))
        self.count += 1
        return self.count - 1 == self.target

    def _visit_body(self, body: list) -> list:
        out = []
        for stmt in body:
            new = self.visit(stmt)
            out.extend(new if isinstance(new, list) else [new])
        return out

    def visit_FunctionDef(self, node):  # annotations and decorators are not behaviour
        node.body = self._visit_body(node.body)
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [
            None if d is None else self.visit(d) for d in node.args.kw_defaults
        ]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):  # decorators (e.g. frozen=True) and bases are not behaviour
        node.body = self._visit_body(node.body)
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        new = SWAP_BINOP.get(type(node.op))
        if new and self._point(node, f"{type(node.op).__name__} -> {new.__name__}"):
            node.op = new()
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        new = SWAP_BINOP.get(type(node.op))
        if new and self._point(node, f"{type(node.op).__name__}= -> {new.__name__}="):
            node.op = new()
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            new = SWAP_CMP.get(type(op))
            if new and self._point(node, f"{type(op).__name__} -> {new.__name__}"):
                node.ops[i] = new()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._point(node, f"{type(node.op).__name__} -> {new.__name__}"):
            node.op = new()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, (ast.Not, ast.USub)) and self._point(
            node, f"drop {type(node.op).__name__}"
        ):
            return node.operand
        return node

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._point(node, f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, int):
            if self._point(node, f"{value} -> {value + 1}"):
                return ast.copy_location(ast.Constant(value + 1), node)
        elif isinstance(value, float):
            new = value * 2 if value else 1.0
            if self._point(node, f"{value} -> {new}"):
                return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        for i, keyword in enumerate(list(node.keywords)):  # e.g. drop spmd_axis_name="pod"
            if keyword.arg and self._point(
                node, f"drop {keyword.arg}= in {ast.unparse(node.func)}()"
            ):
                node.keywords = node.keywords[:i] + node.keywords[i + 1:]
        if isinstance(node.func, ast.Attribute) and node.func.attr == "chain":  # optax.chain
            for i in range(len(node.args)):
                if self._point(node, f"drop chain element {i} `{ast.unparse(node.args[i])[:40]}`"):
                    node.args = node.args[:i] + node.args[i + 1:]
                    break
        if isinstance(node.func, ast.Name) and node.func.id in SWAP_NAME:
            new = SWAP_NAME[node.func.id]
            if self._point(node, f"{node.func.id}() -> {new}()"):
                node.func = ast.copy_location(ast.Name(new, ast.Load()), node.func)
        elif isinstance(node.func, ast.Attribute) and node.func.attr in SWAP_METHOD:
            new = SWAP_METHOD[node.func.attr]
            if new is None:
                if self._point(node, f"drop .{node.func.attr}()"):
                    return node.func.value
            elif self._point(node, f".{node.func.attr}() -> .{new}()"):
                node.func.attr = new
        return node

    def visit_Expr(self, node):
        """A statement that is a call (e.g. `pipeline.add_skip_range(a, b)`): drop it."""
        self.generic_visit(node)
        if isinstance(node.value, ast.Call) and self._point(
            node, f"drop `{ast.unparse(node)[:50]}`"
        ):
            return ast.copy_location(ast.Pass(), node)
        return node


def mutants_of(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / "platform" / module).read_text())
    walker = _Mutator(None, _skipped_lines(tree))
    walker.visit(tree)
    return [Mutant(module, i, line, d) for i, (line, d) in enumerate(walker.points)]


def mutated_source(mutant: Mutant) -> str:
    text = (ROOT / "platform" / mutant.module).read_text()
    tree = ast.parse(text)
    walker = _Mutator(mutant.index, _skipped_lines(tree))
    tree = walker.visit(tree)
    ast.fix_missing_locations(tree)
    source = ast.unparse(tree)
    # A mutant that changes nothing would count as a survivor: never let one through.
    if source == ast.unparse(ast.parse(text)):
        raise AssertionError(f"mutant {mutant} did not change {mutant.module}")
    return source


def run_tests(tests: list[str], package_dir: Path | None, timeout: float) -> tuple[bool, float]:
    """(passed, seconds) for pytest on `tests` with palm_platform from `package_dir`."""
    env = dict(os.environ)
    if package_dir is not None:
        env["PYTHONPATH"] = f"{package_dir}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           "-o", "addopts=", *tests]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - start  # a mutant that hangs the tests is caught
    return done.returncode == 0, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="only this module (repeatable); default: all")
    parser.add_argument("--max", type=int, default=10, help="mutants per module (sampled)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--index", type=int, action="append",
                        help="run these mutants of the (single) --module, by their --list index")
    parser.add_argument("--old", nargs="*", help="override the module's pre-issue-19 tests")
    parser.add_argument("--new", nargs="*", help="override the module's issue-19 tests")
    args = parser.parse_args()
    modules = args.module or list(MODULES)
    totals = []
    for module in modules:
        old, new = MODULES[module]
        old = old if args.old is None else args.old
        new = new if args.new is None else args.new
        every = mutants_of(module)
        limit = min(args.max, DEFAULT_MAX.get(module, args.max)) if not args.module else args.max
        rng = random.Random(f"{args.seed}:{module}")  # the same sample whatever else runs
        chosen = (
            sorted(rng.sample(every, limit), key=lambda m: m.index) if len(every) > limit else every
        )
        if args.index:
            chosen = [every[i] for i in args.index]
        if args.list:
            for m in chosen:
                print(f"{module}:{m.line} #{m.index} {m.description}")
            continue
        # The unmutated tests must pass, and give the timeout (a hang is a kill).
        passed, base = run_tests(old + new, None, timeout=1800)
        if not passed:
            print(f"{module}: the tests fail without any mutant; fix them first")
            return 1
        timeout = 3 * base + 30
        killed_before = killed_after = 0
        survivors = []
        for m in chosen:
            with tempfile.TemporaryDirectory(prefix="palm-mutant-") as tmp:
                package = Path(tmp) / "palm_platform"
                shutil.copytree(ROOT / "platform", package,
                                ignore=shutil.ignore_patterns("__pycache__", "corpus"))
                (package / "data" / "corpus").symlink_to(ROOT / "platform" / "data" / "corpus")
                (package / m.module).write_text(mutated_source(m))
                caught_before = bool(old) and not run_tests(old, Path(tmp), timeout)[0]
                caught_after = caught_before or (
                    bool(new) and not run_tests(new, Path(tmp), timeout)[0]
                )
            killed_before += caught_before
            killed_after += caught_after
            if not caught_after:
                survivors.append(m)
            mark = (
                "killed (old tests)"
                if caught_before
                else "killed (new tests)"
                if caught_after
                else "SURVIVED"
            )
            print(f"  {module}:{m.line} {m.description}: {mark}", flush=True)
        n = len(chosen)
        totals.append((module, n, len(every), killed_before, killed_after, survivors))
        print(f"{module}: {n} of {len(every)} mutants, killed before {killed_before}/{n} "
              f"({100 * killed_before / max(n, 1):.0f}%), after {killed_after}/{n} "
              f"({100 * killed_after / max(n, 1):.0f}%)", flush=True)
    if args.list:
        return 0
    print("\nsummary (per module: mutants run, kill rate before -> after issue 19's tests)")
    for module, n, total, before, after, survivors in totals:
        print(f"  {module:28s} {n:3d}/{total:<3d} {100 * before / max(n, 1):5.0f}% -> "
              f"{100 * after / max(n, 1):4.0f}%")
        for m in survivors:
            print(f"      survivor {module}:{m.line} {m.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
