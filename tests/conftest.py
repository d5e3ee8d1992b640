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


import importlib.util  # noqa: E402 - after the environment set-up above, on purpose
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# -- a local GCS emulator (platform/storage/emulator.py) for the gs:// tests ---------------


@pytest.fixture(scope="session")
def gcs_emulator():
    """One in-memory GCS server on 127.0.0.1 for the session (started on first use)."""
    from palm_platform.storage.emulator import gcs_emulator as start

    with start(bucket="palm-session") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def gcs_bucket(gcs_emulator, request):
    """A fresh bucket per test module, `gs://palm-<module>`; while the module runs, this
    process (and the subprocesses it starts) sends gs:// to the emulator."""
    from palm_platform.storage.emulator import clear_client_caches

    name = "palm-" + re.sub(r"[^a-z0-9]+", "-", request.module.__name__.lower())[:50].strip("-")
    bucket = gcs_emulator.create_bucket(name)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in gcs_emulator.env.items():
            patch.setenv(key, value)
        clear_client_caches()
        yield bucket
    clear_client_caches()


# -- one JAX persistent compilation cache for the session (platform/train/compile_cache.py) ------
# Tests compile the same small programs again and again: each in-process Trainer (palm-tiny
# jobs), each model and eval test builds new jitted functions, which JAX's in-memory caches never
# share. On disk, keyed by the program (compile_cache.py lists the key), the second compile of a
# program is a load. Every in-process run caches here instead of its run folder; the processes
# the tests start keep their own caches. A test of the cache itself opts out (`own_compile_cache`).
# Measured on 2 cores: the fast tier 9.0 -> 7.5 min (docs/operations.md, "Test tiers"); loading an
# executable gives the same bits as compiling it (the bitwise-equality tests pass with it).


# Under pytest-xdist (the fast tier) the workers share one directory, so a program one worker
# compiled is a load in the other (their keys match: same flags, devices and jaxlib). JAX writes
# an entry in place (not renamed into place), so a worker could read another's half-written
# entry: a size limit turns on JAX's own file lock around every read and write (lru_cache.py),
# far above what a session writes, so nothing is ever evicted.
_SESSION_CACHE_MAX_BYTES = 64 << 30


def _session_cache_directory(tmp_path_factory) -> str:
    # tests/support/xdist.py's session_root (not imported: this file also runs outside the
    # repository, in test_conftest_require.py's copy)
    base = tmp_path_factory.getbasetemp()
    if not re.fullmatch(r"popen-gw\d+", base.name):
        return str(tmp_path_factory.mktemp("compile-cache"))
    shared = base.parent / "compile-cache"
    shared.mkdir(exist_ok=True)
    return str(shared)


@pytest.fixture(scope="session", autouse=True)
def _session_compile_cache(tmp_path_factory):
    import jax

    from palm_platform.train.compile_cache import CompileCache

    jax.config.update("jax_compilation_cache_max_size", _SESSION_CACHE_MAX_BYTES)
    directory = _session_cache_directory(tmp_path_factory)
    CompileCache.shared_directory = directory
    CompileCache.enable(directory)
    yield directory
    CompileCache.shared_directory = None


@pytest.fixture(autouse=True)
def _compile_cache_is_the_sessions_again(_session_compile_cache):
    """After a run with the cache off (or a test that opted out), the next test uses it again."""
    yield
    import jax

    from palm_platform.train.compile_cache import CompileCache

    CompileCache.shared_directory = _session_compile_cache
    if jax.config.jax_compilation_cache_dir != _session_compile_cache:
        CompileCache.enable(_session_compile_cache)


@pytest.fixture
def own_compile_cache():
    """For a test of the compile cache itself: its runs use their own directories (first
    compiles miss) and the session's is untouched. Use as
    `@pytest.mark.usefixtures("own_compile_cache")`."""
    from palm_platform.train.compile_cache import CompileCache

    CompileCache.shared_directory = None
    CompileCache.enable(None)


# -- the fast tier: tests marked neither ray nor multiprocess (tests/support/tiers.py) ---------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures: its markers, for the helpers that start clusters and
    processes to check (a module-scoped cluster fixture is set up by its first test)."""
    # tests/support/tiers.py's MARKS (not imported: this file also runs outside the repository,
    # in test_conftest_require.py's copy)
    os.environ["PALM_TEST_MARKS"] = ",".join(sorted({mark.name for mark in item.iter_markers()}))


# -- a local fake-TPU Ray cluster (tests/support/local_cluster.py) for the Ray tests ----------


# Every module that asks for `local_cluster` shares one cluster: bringing one up takes 11-13 s,
# and the modules that use it run jobs on it (`palm run`, `ray job submit`, killing only the
# jobs' own worker processes), which leave nothing behind for the next module. Those modules run
# one after another (pytest_collection_modifyitems), and the cluster goes down after the last of
# them, so no other module's own cluster (another shape, nodes killed, `palm run` bringing its
# own up) ever runs beside it. A module with a failed test may have left a job holding the
# hosts: the next module then gets a fresh cluster, so one failure never cascades.

_CLUSTER_FIXTURE = "local_cluster"
_cluster_modules: set[str] = set()  # the modules with a test that uses it
_shared_cluster: list = []  # [(ExitStack, ClusterState)] while it is up
_failed_modules: set[str] = set()


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """1 pod x 2 fake hosts x 2 chips, through `palm cluster up` / `down`: shared by the
    modules that use it (above)."""
    if not _shared_cluster:
        from contextlib import ExitStack

        from tests.support.local_cluster import running_cluster

        stack = ExitStack()
        state = stack.enter_context(running_cluster(
            tmp_path_factory.mktemp("cluster"), pods=1, hosts_per_pod=2, chips_per_host=2,
            timeout_s=240))
        _shared_cluster.append((stack, state))
    return _shared_cluster[0][1]


def _stop_shared_cluster() -> None:
    while _shared_cluster:
        _shared_cluster.pop()[0].close()


def _module_of(item) -> str:
    return item.nodeid.split("::")[0]


def pytest_collection_modifyitems(session, config, items):
    """The modules that use the shared cluster run one after another, where the first of them
    was; everything else keeps its order."""
    _cluster_modules.clear()
    _cluster_modules.update(_module_of(item) for item in items
                            if _CLUSTER_FIXTURE in getattr(item, "fixturenames", ()))
    first = next((i for i, item in enumerate(items) if _module_of(item) in _cluster_modules),
                 None)
    if first is not None:
        order = {id(item): (first if _module_of(item) in _cluster_modules else i)
                 for i, item in enumerate(items)}
        items.sort(key=lambda item: order[id(item)])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _failed_modules.add(_module_of(item))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of the modules sharing the cluster (their module-scoped fixtures are
    torn down by then), or after a module with a failure: the cluster goes down."""
    try:
        return (yield)
    finally:
        module = _module_of(item)
        last = nextitem is None or _module_of(nextitem) != module
        if _shared_cluster and last and (module in _failed_modules or nextitem is None
                                         or _module_of(nextitem) not in _cluster_modules):
            _stop_shared_cluster()


def pytest_sessionfinish(session, exitstatus):
    _stop_shared_cluster()  # a run stopped early (-x, Ctrl-C) leaves no cluster behind


def require(module: str, why: str) -> None:
    """Skip when `module` is missing here; fail when CI is set, where a skip would hide a
    real path (CI installs every extra, so a missing one is a broken set-up, not a choice)."""
    if importlib.util.find_spec(module) is not None:
        return
    message = f"{why}: `{module}` is not installed"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: CI must install it (bash scripts/setup.sh)",
                    pytrace=False)
    pytest.skip(message)


def require_libtpu() -> None:
    """For `palm plan` tests: they compile for a real TPU topology through libtpu."""
    require("libtpu", "needs the tpu extra")


@pytest.fixture
def libtpu():
    """Use as `pytestmark = pytest.mark.usefixtures("libtpu")`: see require_libtpu."""
    require_libtpu()


# -- Ray's token (platform/cluster/auth.py): one of the test session's own, never ~/.ray/auth_token
# --
# `palm cluster up` starts its nodes in token mode and makes a token where Ray reads it when
# none is at hand. A token appearing at the real ~/.ray/auth_token would turn token mode on for
# every later Ray process of this user on the machine (other sessions' clusters and tests), so
# the tests' clusters, drivers and `ray job submit`s all read this session's file instead
# (RAY_AUTH_TOKEN_PATH, set at import so every subprocess inherits it; restored at exit).
# Made here, not by the first `palm cluster up`: a RAY_AUTH_TOKEN_PATH naming a missing file is
# an error for every Ray process that starts before it exists.
_SAVED_TOKEN_PATH = os.environ.get("RAY_AUTH_TOKEN_PATH")
_SESSION_TOKEN_DIR = tempfile.mkdtemp(prefix="palm-test-ray-token-")


def _session_token_path() -> str:
    import secrets

    path = os.path.join(_SESSION_TOKEN_DIR, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path


os.environ["RAY_AUTH_TOKEN_PATH"] = _session_token_path()


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_TOKEN_DIR, ignore_errors=True)
    if _SAVED_TOKEN_PATH is None:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    else:
        os.environ["RAY_AUTH_TOKEN_PATH"] = _SAVED_TOKEN_PATH


@pytest.fixture(autouse=True)
def _ray_auth_environment_is_per_test():
    """Code under test may turn Ray's token mode on in os.environ (cluster/auth.py does, for the
    nodes it starts); restored after each test, so one test's RAY_AUTH_MODE=token never makes
    every later `ray start` of the session demand a token it does not have."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
    yield
    for key in [k for k in os.environ if k.startswith("RAY_AUTH")]:
        del os.environ[key]
    os.environ.update(saved)
