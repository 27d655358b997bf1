"""Sessions as an app gets them (runtime/sessions.py, Encoders, Retriever): its own providers,
provider options and session options passed through; our defaults (one thread count for all
three sessions, no spinning) when absent; the precision following the provider really in use."""
from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

import runtime_fixtures as rf
from runtime_fixtures import run_cli, world  # noqa: F401  (session fixture)

from runtime import sessions
from runtime.encoders import Encoders
from runtime.errors import InputError
from runtime.retrieval import Retriever

SPIN = "session.intra_op.allow_spinning"


def _options(enc: Encoders, modality: str):
    return enc.encoder(modality).session.get_session_options()


def test_defaults_one_thread_count_for_all_three_sessions_and_no_spinning(world):  # noqa: F811
    enc = Encoders(world.bundle, device="cpu")
    opts = [_options(enc, m) for m in ("image", "text", "audio")]
    assert {o.intra_op_num_threads for o in opts} == {sessions.default_threads()} == {enc.threads}
    assert {o.inter_op_num_threads for o in opts} == {1}
    assert {o.get_session_config_entry(SPIN) for o in opts} == {"0"}
    spinning = Encoders(world.bundle, device="cpu", threads=1, spinning=True)
    assert _options(spinning, "image").get_session_config_entry(SPIN) == "1"
    assert _options(spinning, "image").intra_op_num_threads == 1
    assert "spinning off" in enc.settings.describe() and "spinning on" in spinning.settings.describe()


def test_an_apps_providers_options_and_session_options_reach_onnx_runtime(world, monkeypatch):  # noqa: F811
    so = ort.SessionOptions()
    so.intra_op_num_threads = 3
    so.add_session_config_entry(SPIN, "1")
    opts = [{"arena_extend_strategy": "kSameAsRequested"}]
    seen, real = [], ort.InferenceSession

    def spy(*args, **kwargs):  # what ORT is handed (it does not report CPU provider options back)
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    with Retriever(bundle=world.bundle, library=world.library, providers=["CPUExecutionProvider"],
                   provider_options=opts, session_options=so) as r:
        res = r.query(world.pages["tall"], top_k=1)
        loaded = r.encoders.encoder("image")
    assert res.tracks and loaded.provider == "cpu"  # the provider really used, named as before
    got = loaded.session.get_session_options()
    assert got.intra_op_num_threads == 3 and got.get_session_config_entry(SPIN) == "1"
    assert seen and all(k["providers"] == ["CPUExecutionProvider"] and k["provider_options"] == opts
                        and k["sess_options"] is so for k in seen)
    # A provider ORT knows but this build lacks: ORT would run on the CPU; we say so once.
    sessions._warned.clear()
    enc = Encoders(world.bundle, providers=["CoreMLExecutionProvider"])
    assert enc.encoder("text").provider == "cpu"
    with pytest.raises(InputError, match="CoreMLExecutionProvider is not available"):
        Encoders(world.bundle, providers=["CoreMLExecutionProvider"], strict_device=True).encoder("text")


@pytest.mark.parametrize("kwargs, message", [
    (dict(providers=["NoSuchExecutionProvider"]), "unknown ONNX Runtime execution provider"),
    (dict(providers=["CPUExecutionProvider"], device="cpu"), "not both"),
    (dict(providers=["CPUExecutionProvider"], provider_options=[{}, {}]), "one entry per provider"),
    (dict(session_options="so", threads=2), "used as given"),
    (dict(threads=0), "threads must be >= 1"),
])
def test_bad_session_requests_are_refused(world, kwargs, message):  # noqa: F811
    if kwargs.get("session_options") == "so":
        kwargs["session_options"] = ort.SessionOptions()
    with pytest.raises(InputError, match=message):
        Encoders(world.bundle, **kwargs).encoder("text")


def test_cuda_that_fails_to_start_means_int8_on_the_cpu(world, monkeypatch, caplog):  # noqa: F811
    # onnxruntime-gpu installed (CUDA listed) but CUDA cannot start: ORT runs the session on the
    # CPU. The precision must follow the CPU (int8), not the plan made for CUDA (fp16, else fp32).
    monkeypatch.setattr(sessions, "cuda_available", lambda: True)
    sessions._warned.clear()
    with caplog.at_level(logging.WARNING, logger="manga_music"):
        enc = Encoders(world.bundle, device="auto")
        assert enc.device.device == "cuda"  # the plan
        image = enc.encoder("image")
        text = enc.encoder("text")
    assert (image.provider, image.encoder.precision) == ("cpu", "int8")
    assert (text.provider, text.encoder.precision) == ("cpu", "int8")
    assert enc.device.device == "cpu"
    failed = [r for r in caplog.records if "CUDA provider failed to start" in r.getMessage()]
    assert len(failed) == 1  # later sessions go straight to the CPU
    # An explicit precision is kept, on whatever provider runs it.
    sessions._warned.clear()
    assert Encoders(world.bundle, device="cuda", precision="fp32").encoder("image").encoder.precision == "fp32"


def test_cli_provider_option_passes_through(world):  # noqa: F811
    p = run_cli("runtime.query", world.pages["tall"], "--bundle", world.bundle, "--library", world.library,
                "--provider", "CPUExecutionProvider", "--top-k", "1", "--json")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    help_text = run_cli("runtime.query", "--help").stdout
    assert "--provider NAME" in help_text and "CoreMLExecutionProvider" in help_text


def test_make_session_reads_back_what_it_got(world):  # noqa: F811
    sess, used = sessions.make_session(world.bundle / "image.fp32.onnx", device="cpu", threads=2)
    assert used == "cpu" and sess.get_session_options().intra_op_num_threads == 2
    settings = sessions.SessionSettings(threads=1)
    sess, _ = sessions.make_session(rf.ROOT / "runtime" / "defaults" / "bundle" / "text.int8.onnx", settings)
    assert sess.get_session_options().intra_op_num_threads == 1
