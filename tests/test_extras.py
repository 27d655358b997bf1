"""Without its extra, a command says in one line which one to install (exit 2), instead of
ending in an import traceback: `python -m export` ([export]) and `python -m training.*`
([train]; the demo needs both)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from runtime.extras import EXTRAS, missing_modules

ROOT = Path(__file__).resolve().parents[1]

# Runs a module as `python -m` would, in an interpreter where the named modules cannot be
# imported (as on a machine with only the runtime installed).
_RUN_BLOCKED = textwrap.dedent("""
    import runpy, sys
    blocked = sys.argv[1].split(",")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    module = sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")
HEAVY = "torch,onnx,onnxscript,scipy,tqdm,matplotlib"


@pytest.mark.parametrize("module, extra", [
    ("export", "export"), ("training.finetune", "train"), ("training.evaluate", "train"),
    ("training.demo", "train,export"),
])
@pytest.mark.parametrize("args", [["--help"], ["whatever.pt", "--out", "x"]])
def test_a_command_without_its_extra_says_which_to_install(module, extra, args):
    p = subprocess.run([sys.executable, "-c", _RUN_BLOCKED, HEAVY, module, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"python -m {module}: needs the [{extra}] extra")
    assert f'pip install -e ".[{extra}]"' in lines[0] and "torch" in lines[0]
    assert p.stdout == ""


def test_the_extras_list_the_modules_pyproject_installs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, modules in EXTRAS.items():
        packages = {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in extras[name]}
        assert packages == set(modules), name


def test_with_the_extras_installed_nothing_is_missing():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    assert missing_modules("train", "export") == []
