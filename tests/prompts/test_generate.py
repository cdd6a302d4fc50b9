"""generate_cache against a real local chat-completions server: retries, resume, errors, key hygiene."""
from __future__ import annotations

import json
import logging
import random
import time
import traceback
from datetime import datetime

import pytest

from tgcnet.prompts import (
    GenerationError,
    KnowledgeBank,
    MalformedReplyError,
    PromptTemplates,
    generate_cache,
    load_cache,
    load_templates,
)
from tgcnet.prompts.chat import backoff_delay, endpoint_host
from tgcnet.prompts.replies import parse_descriptions

CONCEPTS = ["finding:pulmonary infection", "laterality:bilateral", "zone:lower left lung", "count:two areas"]
LABELS = [c.split(":", 1)[1] for c in CONCEPTS]
FAST = dict(api_key_env="TGCNET_TEST_KEY", timeout=0.5, backoff_base=0.01, backoff_max=0.05, max_retries=3)


def _run(fake, out, concepts=CONCEPTS, **kw):
    args = {**FAST, "k": 2, "concurrency": 2, **kw}
    return generate_cache(concepts, "test-model", out, base_url=fake.base_url, **args)


def test_generates_and_round_trips(fake_chat, api_key, tmp_path):
    out = tmp_path / "cache.json"
    report = _run(fake_chat, out)
    assert sorted(report.generated) == sorted(CONCEPTS) and report.skipped == []
    assert sorted(fake_chat.labels()) == sorted(LABELS)
    assert {r["auth"] for r in fake_chat.requests} == {f"Bearer {api_key}"}
    loaded = load_cache(out)
    assert loaded.to_dict() == report.cache.to_dict()
    for key, label in zip(CONCEPTS, LABELS):
        entry = loaded[key]
        assert list(entry.descriptions) == fake_chat.descriptions(label, 2)
        prov = entry.provenance
        assert prov.generator == "test-model"
        assert prov.endpoint == f"http://127.0.0.1:{fake_chat.base_url.split(':')[2].split('/')[0]}"
        assert prov.template_hash == load_templates().hash
        datetime.fromisoformat(prov.date)
    bank = KnowledgeBank.from_cache(out)
    assert len(bank) == 4
    assert bank.descriptions_for("Bilateral pulmonary infection, lower left lung.") == [
        *fake_chat.descriptions("pulmonary infection", 2), *fake_chat.descriptions("bilateral", 2),
        *fake_chat.descriptions("lower left lung", 2)]


def test_retries_429_500_and_timeout_then_succeeds(fake_chat, api_key, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tgcnet.prompts")
    fake_chat.plan["lower left lung"] = [429, 500, "hang", "ok"]
    t0 = time.monotonic()
    report = _run(fake_chat, tmp_path / "c.json", concepts=["zone:lower left lung"])
    assert time.monotonic() - t0 < 5.0  # one 0.5 s timeout plus tiny backoffs, not the 10 s hang
    assert fake_chat.count("lower left lung") == 4
    assert [r["action"] for r in fake_chat.requests] == [429, 500, "hang", "ok"]
    assert report.generated == ["zone:lower left lung"]
    warnings = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(warnings) == 3 and "HTTP 429" in warnings[0] and "HTTP 500" in warnings[1]
    assert "timed out after 0.5 s" in warnings[2]


def test_gives_up_after_max_retries_naming_the_concept(fake_chat, api_key, tmp_path):
    fake_chat.plan["bilateral"] = [503] * 10
    with pytest.raises(GenerationError, match=r"concept 'laterality:bilateral': gave up after 3 attempts.*HTTP 503"):
        _run(fake_chat, tmp_path / "c.json", concepts=["laterality:bilateral"], max_retries=2)
    assert fake_chat.count("bilateral") == 3


def test_non_retryable_status_fails_at_once(fake_chat, api_key, tmp_path):
    fake_chat.plan["bilateral"] = [401]
    with pytest.raises(GenerationError, match=r"'laterality:bilateral': request refused, HTTP 401"):
        _run(fake_chat, tmp_path / "c.json", concepts=["laterality:bilateral"])
    assert fake_chat.count("bilateral") == 1


@pytest.mark.parametrize("action, match", [
    ("bad_content", r"'count:two areas': the reply is not JSON .* it starts 'Sure!"),
    ("wrong_shape", r"'count:two areas': expected \{\"descriptions\""),
    ("bad_body", r"'count:two areas': the endpoint's response is not JSON"),
])
def test_malformed_replies_are_clear_errors(fake_chat, api_key, tmp_path, action, match):
    fake_chat.plan["two areas"] = [action]
    with pytest.raises(MalformedReplyError, match=match):
        _run(fake_chat, tmp_path / "c.json", concepts=["count:two areas"])
    assert fake_chat.count("two areas") == 1  # malformed is final: rerun to resume
    assert not (tmp_path / "c.json").exists()


def test_failed_run_resumes_without_rerequesting(fake_chat, api_key, tmp_path):
    out = tmp_path / "c.json"
    fake_chat.plan["lower left lung"] = ["bad_content"]
    with pytest.raises(MalformedReplyError, match="2 generated now and saved.*2 still missing") as info:
        _run(fake_chat, out, concurrency=1)
    assert "rerun the same command to resume" in str(info.value)
    assert fake_chat.labels() == LABELS[:3]  # the 4th was never started
    first = json.loads(out.read_text())["entries"]
    assert sorted(first) == sorted(CONCEPTS[:2])

    fake_chat.requests.clear()
    time.sleep(1.1)  # a re-written entry would get a later date
    report = _run(fake_chat, out, concurrency=1)
    assert fake_chat.labels() == LABELS[2:]
    assert report.skipped == CONCEPTS[:2] and report.generated == CONCEPTS[2:]
    second = json.loads(out.read_text())["entries"]
    assert {k: second[k] for k in first} == first
    assert sorted(second) == sorted(CONCEPTS)


def test_everything_cached_needs_no_key_and_no_request(fake_chat, api_key, tmp_path, monkeypatch):
    out = tmp_path / "c.json"
    _run(fake_chat, out)
    fake_chat.requests.clear()
    monkeypatch.delenv("TGCNET_TEST_KEY")
    report = _run(fake_chat, out)
    assert report.generated == [] and report.skipped == CONCEPTS and fake_chat.requests == []


def test_missing_key_is_a_clear_error_and_no_request(fake_chat, tmp_path, monkeypatch):
    monkeypatch.delenv("TGCNET_TEST_KEY", raising=False)
    with pytest.raises(GenerationError, match="environment variable TGCNET_TEST_KEY is not set"):
        _run(fake_chat, tmp_path / "c.json")
    assert fake_chat.requests == []


def test_changed_template_regenerates(fake_chat, api_key, tmp_path):
    out = tmp_path / "c.json"
    _run(fake_chat, out, concepts=CONCEPTS[:1])
    t = load_templates()
    edited = PromptTemplates(system=t.system + "\nBe brief.", user=t.user)
    report = _run(fake_chat, out, concepts=CONCEPTS[:1], templates=edited)
    assert report.generated == CONCEPTS[:1] and fake_chat.count(LABELS[0]) == 2
    assert load_cache(out)[CONCEPTS[0]].provenance.template_hash == edited.hash != t.hash


def test_concurrency_is_bounded(fake_chat, api_key, tmp_path):
    fake_chat.delay = 0.15
    concepts = ["zone:upper left lung", "zone:middle left lung", "zone:lower left lung",
                "zone:upper right lung", "zone:middle right lung", "zone:lower right lung"]
    report = _run(fake_chat, tmp_path / "c.json", concepts=concepts, concurrency=2)
    assert len(report.generated) == 6
    assert fake_chat.max_inflight == 2


def _all_text(tmp_path, capsys, caplog, *extra) -> str:
    """Everything the run could have leaked into: stdout/stderr, log records, every file written."""
    cap = capsys.readouterr()
    parts = [cap.out, cap.err, caplog.text, *[r.getMessage() for r in caplog.records], *extra]
    parts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    return "\n".join(parts)


def test_api_key_never_appears_in_output_logs_files_or_errors(fake_chat, api_key, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # openai/httpx debug logging included
    fake_chat.echo_auth_on_error = True  # a hostile endpoint echoing the Authorization header back
    fake_chat.plan["bilateral"] = [429, "hang", 500, "ok"]
    fake_chat.plan["two areas"] = [403]
    out = tmp_path / "c.json"
    with pytest.raises(GenerationError) as info:
        _run(fake_chat, out, concurrency=1)
    errors = [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
    assert "[redacted]" in str(info.value)  # the echo was seen and scrubbed
    fake_chat.plan.clear()
    _run(fake_chat, out, concurrency=1)

    from tgcnet.cli import main

    assert main(["prompts", "show", str(out)]) == 0
    assert all(r["auth"] == f"Bearer {api_key}" for r in fake_chat.requests)  # the key was really in use
    text = _all_text(tmp_path, capsys, caplog, *errors)
    assert "lower left lung" in text and "Canned description" in text  # the scan sees real output
    assert api_key not in text
    assert api_key[len("sk-tgcnet-test-"):] not in text


# --------------------------------------------------------------------------- unreachable endpoint

def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_at_once_naming_host_and_port(api_key, tmp_path):
    """Connection refused is not retried: every concept would fail the same way, and backoff only adds minutes."""
    from tgcnet.prompts.generation_errors import EndpointUnreachableError

    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(EndpointUnreachableError) as info:
        generate_cache(CONCEPTS, "m", tmp_path / "c.json", base_url=f"http://127.0.0.1:{port}/v1",
                       api_key_env="TGCNET_TEST_KEY", max_retries=5, backoff_base=1.0)
    assert time.monotonic() - t0 < 5.0  # the old retry loop spent about a minute here
    msg = str(info.value)
    assert "\n" not in msg and f"http://127.0.0.1:{port}" in msg and f"host 127.0.0.1, port {port}" in msg
    assert "rerunning will not help until the endpoint is reachable" in msg
    assert "0 generated" in msg and "4 still missing" in msg
    assert isinstance(info.value, GenerationError) and not (tmp_path / "c.json").exists()


def test_default_port_is_named(api_key, tmp_path, monkeypatch):
    from tgcnet.prompts.generation_errors import EndpointUnreachableError

    with pytest.raises(EndpointUnreachableError, match="host no-such-host.invalid, port 443"):
        generate_cache(CONCEPTS[:1], "m", tmp_path / "c.json", base_url="https://no-such-host.invalid/v1",
                       api_key_env="TGCNET_TEST_KEY", max_retries=5)


def test_dropped_connection_is_still_retried(api_key, tmp_path):
    """A server that accepts and hangs up was reached: that is a transient fault, retried with backoff."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(GenerationError, match="gave up after 3 attempts.*connection error") as info:
            generate_cache(CONCEPTS[:1], "m", tmp_path / "c.json",
                           base_url=f"http://127.0.0.1:{server.getsockname()[1]}/v1", **{**FAST, "max_retries": 2})
    finally:
        server.close()
    from tgcnet.prompts.generation_errors import EndpointUnreachableError

    assert not isinstance(info.value, EndpointUnreachableError) and len(accepted) == 3


# --------------------------------------------------------------------------- units

def test_backoff_grows_caps_and_jitters():
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 10.0, jitter=0.0) for a in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    jittered = [backoff_delay(2, 0.5, 100.0, jitter=0.5, rng=rng) for _ in range(50)]
    assert all(2.0 <= d <= 3.0 for d in jittered) and len(set(jittered)) > 1
    assert backoff_delay(0, 0.5, 10.0, jitter=0.0, retry_after=3.0) == 3.0
    assert backoff_delay(0, 0.5, 10.0, jitter=0.0, retry_after=99.0) == 10.0


@pytest.mark.parametrize("url, expected", [
    ("https://user:sk-secret@api.example.com:8443/v1/?key=sk-secret#frag", "https://api.example.com:8443"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
    ("https://api.openai.com/v1", "https://api.openai.com"),
    ("http://[::1]:9000/v1", "http://[::1]:9000"),
])
def test_endpoint_host_drops_credentials_path_and_query(url, expected):
    assert endpoint_host(url) == expected


def test_parse_descriptions_accepts_fences_and_lists_dedupes_and_truncates():
    reply = '```json\n{"descriptions": ["A  b.", "a b.", "C.", "D.", " "]}\n```'
    assert parse_descriptions(reply, "x:y", 2) == ["A b.", "C."]
    assert parse_descriptions('["One.", "Two."]', "x:y", 5) == ["One.", "Two."]
    with pytest.raises(MalformedReplyError, match="'x:y'.*cut off"):
        parse_descriptions('{"descriptions": ["One', "x:y", 2, finish_reason="length")
    with pytest.raises(MalformedReplyError, match="no non-empty description"):
        parse_descriptions('{"descriptions": ["", "  "]}', "x:y", 2)
    with pytest.raises(MalformedReplyError, match=r"expected \{\"descriptions\""):
        parse_descriptions('{"descriptions": [1, 2]}', "x:y", 2)


@pytest.mark.parametrize("kw", [dict(k=0), dict(concurrency=0), dict(max_retries=-1), dict(timeout=0)])
def test_bad_arguments(kw, tmp_path):
    with pytest.raises(ValueError):
        generate_cache(CONCEPTS, "m", tmp_path / "c.json", **kw)


def test_bad_concept_key(tmp_path):
    with pytest.raises(ValueError, match="kind:value"):
        generate_cache(["nokind"], "m", tmp_path / "c.json")
