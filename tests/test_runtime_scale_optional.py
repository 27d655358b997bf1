"""Ray and Qdrant stay optional (issue 16): the local indexer and a local query never import
them, and without them installed the commands that need them say how to install them in one
line. Runs whether or not the extras are installed (they are blocked in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import runtime_fixtures as rf
from runtime_fixtures import run_cli, world  # noqa: F401  (session fixture)

_BLOCKER = """
import sys

class Block:
    # As on a machine without the extras: importing them fails.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "qdrant_client"):
            raise ImportError(f"{name} is blocked in this test")
        return None
"""


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, cwd=rf.ROOT, env={"PYTHONPATH": str(rf.ROOT), "PATH": ""})


def test_the_local_engine_and_a_local_query_never_import_ray_or_qdrant(world, tmp_path):  # noqa: F811
    p = _run(f"""
        import sys
        sys.path.insert(0, {str(rf.ROOT)!r})
        import runtime
        from runtime.index import main as index
        from runtime.query import main as query
        assert index([{str(world.music)!r}, "--out", {str(tmp_path / "lib")!r}, "--bundle", {str(world.bundle)!r},
                      "--quiet"]) == 0
        assert query([{str(world.pages["tall"])!r}, "--bundle", {str(world.bundle)!r}, "--library",
                      {str(tmp_path / "lib")!r}]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "qdrant_client"))
        assert not loaded, loaded
        print("OK")
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "OK"


def _cli_without_extras(module: str, *args) -> subprocess.CompletedProcess:
    return _run(_BLOCKER + f"""
sys.meta_path.insert(0, Block())
sys.argv = [{module!r}, *{[str(a) for a in args]!r}]
import runpy
runpy.run_module({module!r}, run_name="__main__")
""")


def test_without_the_extras_each_command_says_what_to_install(world, tmp_path):  # noqa: F811
    cases = [
        (("runtime.index", world.music, "--out", tmp_path / "lib", "--bundle", world.bundle, "--engine", "ray"),
         "pip install 'manga-music[ray]'"),
        (("runtime.publish", world.library, "--qdrant", f"qdrant+local://{tmp_path}/q", "--collection", "m"),
         "pip install 'manga-music[qdrant]'"),
        (("runtime.query", world.pages["tall"], "--bundle", world.bundle, "--library", f"qdrant+local://{tmp_path}/m"),
         "pip install 'manga-music[qdrant]'"),
    ]
    for args, message in cases:
        p = _cli_without_extras(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, (args, p.stderr)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_ray_options_without_the_ray_engine_are_usage_errors(world, tmp_path):  # noqa: F811
    for extra in (["--address", "auto"], ["--workers", "2"]):
        p = run_cli("runtime.index", world.music, "--out", tmp_path / "lib", "--bundle", world.bundle, *extra)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--engine ray" in p.stderr
    assert not (tmp_path / "lib").exists()
