"""The README cannot rot: every command in its ```bash blocks is run here.

Commands run in a scratch folder holding stand-ins for what a user brings, in the real
formats: `my_pages/` and `my_music/` (copies of the shipped demo pages and tracks),
`AudioCLIP-Full-Training.pt` (a plain AudioCLIP state dict, tiny-sized so the export takes
seconds), and `data/` with Manga109- and AudioSet-layout folders written by
`training.synthetic`. Fine-tuning commands get overrides appended (tiny model, one step per
epoch) since the paper's recipe is hours of full-size training; everything else runs as
written. A few commands are not run here, each for a stated reason (EXEMPT), and those of an
optional extra only where it is installed (NEEDS_EXTRA).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEFAULTS = REPO / "runtime" / "defaults"

# Appended to fine-tuning commands: same code path, toy scale.
FINETUNE_OVERRIDES = ["--set", "model.size=tiny", "--set", "epochs=1", "--set", "max_steps_per_epoch=1",
                      "--set", "batch_size=4", "--set", "data.num_workers=0", "--set", "progress=false"]
EXEMPT = {
    "python -m pytest -q": "the test command itself: CI runs it (.ci/run, checked below)",
    "pytest benchmarks": "full-size benchmarks, minutes long: run by hand, results in benchmarks/results/",
    "python -m training.demo": "rewrites the shipped demo in place: tests/test_demo.py runs the same command "
                               "with --out a temporary folder and compares the result with what ships",
    "--address": "needs a running Ray cluster: tests/test_runtime_library_ray.py runs --address on a local one",
    "qdrant://db.example": "needs a Qdrant server: tests/test_runtime_library_qdrant.py runs the same calls "
                           "against Qdrant's embedded local mode",
}
# Commands of an optional extra run where it is installed (they exit 2 with an install hint without it).
NEEDS_EXTRA = {"--engine ray": "ray", "qdrant": "qdrant_client"}


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def _exempt(cmd: str) -> str | None:
    return next((why for key, why in EXEMPT.items() if key in cmd), None)


def _extra_missing(cmd: str) -> bool:
    import importlib.util

    return any(key in cmd and importlib.util.find_spec(module) is None for key, module in NEEDS_EXTRA.items())


def test_readme_has_the_two_commands_and_ci_runs_the_second():
    cmds = readme_commands()
    assert cmds[0].startswith("pip install -e . && python -m runtime.query ")
    assert cmds[1] == 'pip install -e ".[train,export,ann,ray,qdrant,dev]" && python -m pytest -q'
    assert cmds[1] in (REPO / ".ci" / "run").read_text()


# The README's sample: a ```text block whose first line is `$ COMMAND` and the rest its output.
SAMPLE = re.compile(r"```text\n\$ (python -m runtime\.query [^\n]*)\n(.*?)```", flags=re.S)


def test_readme_sample_output_is_what_its_command_prints(tmp_path):
    """The sample at the top of the README is the real output of its command, run from the
    repository root on the shipped demo (stdout, then the demo note on stderr, as a terminal
    shows them). When the demo is rebuilt the numbers change: this test then fails and
    prints the block to paste into the README; or regenerate it by hand with
    `python -m runtime.query runtime/defaults/pages/love_romance_01.jpg --top-k 3 2>&1`."""
    m = SAMPLE.search(README.read_text(encoding="utf-8"))
    assert m, "the README has no ```text sample block starting with `$ python -m runtime.query`"
    command, shown = m.group(1), m.group(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGA_MUSIC_")}
    env.update(PYTHONPATH=str(REPO), MANGA_MUSIC_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.rstrip("\n") + "\n" + done.stderr
    assert shown == printed, ("the README's sample output is stale; replace its ```text block with:\n\n"
                              f"```text\n$ {command}\n{printed}```")


def test_readme_names_only_files_the_repository_has():
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"[\w./-]+\.md\b", text))
    named |= {p for p in re.findall(r"`((?:runtime|training|export|benchmarks|tests|configs)/[\w./-]+)`", text)}
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert missing == []


def test_gitignore_lists_no_tracked_file():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from training.model import AudioCLIP, AudioCLIPConfig
    from training.synthetic.layouts import write_audioset, write_manga109

    if not (DEFAULTS / "bundle" / "manifest.json").is_file():
        pytest.fail("the shipped demo bundle is missing: run `python -m training.demo`")
    ws = tmp_path_factory.mktemp("readme")
    pages = ws / "my_pages"
    pages.mkdir()
    demo_pages = sorted((DEFAULTS / "pages").glob("*.jpg"))[:3]
    for p in demo_pages:
        shutil.copy(p, pages / p.name)
    from PIL import Image

    Image.open(demo_pages[0]).save(pages / "page_012.png")
    music = ws / "my_music"
    music.mkdir()
    for p in sorted((DEFAULTS / "music").glob("*.ogg"))[::5]:
        shutil.copy(p, music / p.name)
    torch.manual_seed(0)
    torch.save(AudioCLIP(AudioCLIPConfig.tiny()).state_dict(), ws / "AudioCLIP-Full-Training.pt")
    data = ws / "data"
    manga = write_manga109(data / "Manga109_released_2021_12_30", pages_per_book=3, books_per_genre=1, seed=3)
    shutil.copy(manga / "genres.csv", data / "manga109_genres.csv")
    audioset = write_audioset(data / "audioset", clips_per_mood=3, seed=3, seconds=2.0,
                              csv_name="balanced_train_segments.csv")
    # The config reads the balanced and eval CSVs; a segment listed twice is one clip.
    shutil.copy(audioset / "balanced_train_segments.csv", audioset / "eval_segments.csv")
    shutil.copytree(REPO / "configs", ws / "configs")
    return ws


@pytest.mark.slow
def test_every_readme_command_runs(workspace):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    ran = 0
    for cmd in readme_commands():
        if _exempt(cmd) or _extra_missing(cmd):
            continue
        cmd = re.sub(r"^pip install [^&]*&& ", "", cmd)  # installing is what CI itself does
        if cmd.startswith("python -m training.finetune"):
            cmd += " " + " ".join(FINETUNE_OVERRIDES)
        cmd = re.sub(r"^python ", f"{sys.executable} ", cmd)
        # The first command is run from a fresh clone's root, on the files the package ships.
        cwd = REPO if "runtime/defaults/" in cmd else workspace
        done = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README command failed: {cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 10
    assert (workspace / "picks.json").stat().st_size > 0
    assert (workspace / "my-bundle" / "manifest.json").is_file()
    assert (workspace / "eval" / "report.md").is_file()
