"""The runtime never imports torch: import every runtime module and run a whole index +
query in a fresh interpreter where ``import torch`` raises."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import runtime_fixtures as rf
from runtime_fixtures import world  # noqa: F401  (session fixture)

_SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys

    class NoTorch:
        # Any attempt to import torch (or a submodule) fails, as on a machine without it.
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    sys.path.insert(0, {root!r})
    import runtime
    modules = [m.name for m in pkgutil.iter_modules(runtime.__path__, "runtime.")]
    for name in modules:
        importlib.import_module(name)
    for name in runtime.__all__:
        getattr(runtime, name)

    from runtime import Encoders, Retriever, build_library
    enc = Encoders({bundle!r}, device="cpu", threads=1)
    build_library({music!r}, {out!r}, enc, progress=False)
    with Retriever(bundle={bundle!r}, library={out!r}, device="cpu", threads=1) as r:
        res = r.query({page!r}, top_k=2)
        assert len(res.tracks) == 2 and len(res.moods) == 7
        assert r.query_text("sad piano", top_k=1).tracks
        assert len(r.moods_for_track({track!r})) == 7

    from runtime.query import main
    assert main([{page!r}, "--bundle", {bundle!r}, "--library", {out!r}, "--json"]) == 0

    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("OK", len(modules), "modules")
""")


def test_runtime_imports_and_queries_with_torch_blocked(world, tmp_path):  # noqa: F811
    script = _SCRIPT.format(root=str(rf.ROOT), bundle=str(world.bundle), music=str(world.music),
                            out=str(tmp_path / "lib"), page=str(world.pages["tall"]), track=str(world.tracks["noise"]))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("OK")
    assert "torch is blocked" not in p.stderr


def test_no_runtime_source_mentions_importing_torch():
    offenders = []
    for path in (rf.ROOT / "runtime").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("import torch", "from torch")):
                offenders.append(f"{path.name}:{n}")
    assert offenders == []
