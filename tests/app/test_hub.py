"""app.core.hub against a local Hub (tests/app/hub_server.py): download, resume, integrity, errors, offline, CLI.

Most tests serve a small repo (SmolLM2's config/tokenizer + two synthetic shards of 1.5 and 4 MiB, plus files
that must never be fetched); the end-to-end test serves the real SmolLM2 checkpoint, downloads it, quantizes it
with our quantizer and chats with it through llama.cpp.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest

from app.cli import main
from app.core import hub as hubmod
from app.core.errors import (
    DiskSpaceError,
    DownloadCancelled,
    HubAuthError,
    HubError,
    IntegrityError,
    OfflineError,
    RepoNotFoundError,
    UnsupportedRepoError,
)

from . import hub_server
from .hub_server import JUNK, SHARDS, SMALL_REPO, TOKEN

hub, small_files, small_repo = hub_server.hub, hub_server.small_files, hub_server.small_repo  # fixtures

ROOT = Path(__file__).resolve().parents[2]
BIG = SHARDS[1]  # the 4 MiB shard
NEEDED = {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
          "generation_config.json", "chat_template.jinja", "README.md", *SHARDS}


def repo_dir(repo_id: str = SMALL_REPO) -> Path:
    return Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))


def partials(repo_id: str = SMALL_REPO) -> list[Path]:
    return sorted((repo_dir(repo_id) / "blobs").glob("*.incomplete"))


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---- listing and a full download ------------------------------------------------------------------------------
def test_list_files_gives_sizes_hashes_and_what_conversion_needs(small_repo, small_files):
    listing = hubmod.list_files(SMALL_REPO)
    assert {f.path: f.size for f in listing.files} == {n: len(b) for n, b in small_files.items()}
    by = {f.path: f for f in listing.files}
    assert by[BIG].sha256 == sha256(small_files[BIG]) and by["config.json"].sha256 is None
    assert by["config.json"].blob_id == hashlib.sha1(b"blob %d\0" % len(small_files["config.json"]) +  # noqa: S324
                                                     small_files["config.json"]).hexdigest()
    needed = {f.path for f in listing.needed}
    assert needed == NEEDED  # the shard the index does not name (consolidated.safetensors) is not needed
    assert "consolidated.safetensors" in by and not by["consolidated.safetensors"].needed
    assert not needed & set(JUNK)
    assert listing.needed_bytes == sum(len(small_files[n]) for n in NEEDED)
    assert listing.architecture == "LlamaForCausalLM" and not listing.offline and len(listing.commit) == 40
    res = hubmod.download(SMALL_REPO)  # the listing promised exactly what the download fetches
    assert res.bytes_total == listing.needed_bytes and sorted(res.files) == sorted(needed)
    assert res.bytes_fetched == res.bytes_total - len(small_files["model.safetensors.index.json"])  # index reused
    assert len(small_repo.file_gets("model.safetensors.index.json")) == 1


def test_a_broken_index_is_refused_when_listing(hub, small_files):
    hub.add_repo("org/bad-index", {**small_files, "model.safetensors.index.json": b'{"weight_map": {"a": '
                                                                                  b'"missing.safetensors"}}'})
    with pytest.raises(UnsupportedRepoError, match="names shards the repo does not have.*missing.safetensors"):
        hubmod.list_files("org/bad-index")
    hub.add_repo("org/not-json", {**small_files, "model.safetensors.index.json": b"not json"})
    with pytest.raises(UnsupportedRepoError, match="not a valid safetensors index"):
        hubmod.download("org/not-json")
    assert hub.body_bytes(SHARDS[0]) == hub.body_bytes(SHARDS[1]) == 0


def test_download_fetches_only_needed_files_into_the_standard_cache(small_repo, small_files):
    events = []
    res = hubmod.download(SMALL_REPO, progress=events.append)
    assert set(res.files) == NEEDED and not res.offline
    assert res.path == repo_dir() / "snapshots" / res.commit
    for name in NEEDED:
        assert (res.path / name).read_bytes() == small_files[name]
        assert (res.path / name).is_symlink()  # pointer -> blobs/<etag>, the huggingface_hub layout
    assert (repo_dir() / "refs" / "main").read_text() == res.commit
    fetched = {r.path.rsplit("/", 1)[-1] for r in small_repo.requests if r.method == "GET" and "/resolve/" in r.path}
    assert fetched == NEEDED  # never the .bin/.onnx/.gguf, nor the shard the index does not name
    total = sum(len(small_files[n]) for n in NEEDED)
    assert res.bytes_total == res.bytes_fetched == small_repo.body_bytes() == total
    # progress: per file and overall, monotone, ending complete
    dones = [e.done for e in events]
    assert dones == sorted(dones) and events[-1].done == events[-1].total == total
    last = {}
    for e in events:
        last[e.file] = e
    assert all(e.file_done == e.file_total == len(small_files[f]) for f, e in last.items())
    # other tools see our files: huggingface_hub itself resolves them from the cache without the network
    from huggingface_hub import hf_hub_download

    assert Path(hf_hub_download(SMALL_REPO, BIG, local_files_only=True)).read_bytes() == small_files[BIG]

    n = len(small_repo.requests)
    again = hubmod.download(SMALL_REPO)
    assert again.bytes_fetched == 0 and again.path == res.path
    assert [r.path for r in small_repo.requests[n:]] == [f"/api/models/{SMALL_REPO}/revision/main"]


def test_files_another_tool_downloaded_are_reused(small_repo, small_files):
    from huggingface_hub import hf_hub_download

    hf_hub_download(SMALL_REPO, BIG)  # huggingface_hub's own download (HEAD + GET), into the same cache
    before = small_repo.body_bytes(BIG)
    res = hubmod.download(SMALL_REPO)
    assert small_repo.body_bytes(BIG) == before == len(small_files[BIG])  # not fetched a second time
    assert res.bytes_fetched == res.bytes_total - len(small_files[BIG])
    assert (res.path / BIG).read_bytes() == small_files[BIG]


def test_a_revision_is_downloaded_and_cached_under_its_ref(small_repo, small_files):
    files = dict(small_files, **{"config.json": small_files["config.json"].replace(b"576", b"576 ")})
    commit = small_repo.add_repo(SMALL_REPO, files, revision="v2")
    res = hubmod.download(SMALL_REPO, revision="v2")
    assert res.commit == commit and (repo_dir() / "refs" / "v2").read_text() == commit
    assert (res.path / "config.json").read_bytes() == files["config.json"]
    assert res.bytes_fetched == len(files["config.json"]) + sum(len(small_files[n]) for n in NEEDED
                                                                if n != "config.json")


# ---- interruption, resume, cancel -----------------------------------------------------------------------------
def test_a_cut_connection_is_resumed_within_the_run(small_repo, small_files):
    cut = 1_000_000
    small_repo.cut(BIG, after=cut)
    res = hubmod.download(SMALL_REPO)
    gets = small_repo.file_gets(BIG)
    assert [g.range for g in gets] == [None, f"bytes={cut}-"]
    assert [g.body_bytes for g in gets] == [cut, len(small_files[BIG]) - cut]
    assert (res.path / BIG).read_bytes() == small_files[BIG]


def test_a_failed_download_resumes_next_run_fetching_only_the_rest(small_repo, small_files):
    cut = 1_500_000
    small_repo.cut(BIG, after=cut, then_status=503)  # cut, then the server errors: the run fails
    with pytest.raises(HubError, match="server error.*resumes"):
        hubmod.download(SMALL_REPO)
    [part] = partials()
    assert part.stat().st_size == cut and not (repo_dir() / "blobs" / sha256(small_files[BIG])).exists()
    small_repo.heal()
    wire = small_repo.body_bytes(BIG)
    res = hubmod.download(SMALL_REPO)
    assert small_repo.body_bytes(BIG) - wire == len(small_files[BIG]) - cut  # only the missing bytes
    assert small_repo.file_gets(BIG)[-1].range == f"bytes={cut}-"
    assert (res.path / BIG).read_bytes() == small_files[BIG] and partials() == []


def test_a_server_that_ignores_range_makes_the_file_start_over_cleanly(small_repo, small_files):
    small_repo.cut(BIG, after=1_500_000, then_status=503)
    with pytest.raises(HubError):
        hubmod.download(SMALL_REPO)
    small_repo.heal()
    small_repo.ignore_range = True
    events = []
    res = hubmod.download(SMALL_REPO, progress=events.append)
    assert small_repo.file_gets(BIG)[-1].body_bytes == len(small_files[BIG])  # whole file again
    assert (res.path / BIG).read_bytes() == small_files[BIG]  # not the old prefix + the whole file
    assert events[-1].done == events[-1].total == res.bytes_total


def test_a_killed_download_resumes_without_starting_over(small_repo, small_files):
    stall = 3_500_000
    small_repo.stall(BIG, after=stall)
    env = dict(os.environ, HF_ENDPOINT=small_repo.url, HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "download", SMALL_REPO], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while small_repo.body_bytes(BIG) < stall and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert small_repo.body_bytes(BIG) == stall, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.3)  # let the client write what it has
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    [part] = partials()
    kept = part.stat().st_size
    assert 0 < kept <= stall  # at most one write buffer was lost with the process
    small_repo.heal()
    res = hubmod.download(SMALL_REPO)
    assert small_repo.body_bytes(BIG) - stall == len(small_files[BIG]) - kept
    assert small_repo.file_gets(BIG)[-1].range == f"bytes={kept}-"
    assert (res.path / BIG).read_bytes() == small_files[BIG]


def test_cancel_keeps_the_partial_file_and_the_next_run_resumes(small_repo, small_files):
    cancel = threading.Event()
    seen = []

    def progress(p: hubmod.DownloadProgress) -> None:
        seen.append(p)
        if p.file == BIG and p.file_done >= 1_000_000:
            cancel.set()

    with pytest.raises(DownloadCancelled, match="resumes"):
        hubmod.download(SMALL_REPO, progress=progress, cancel=cancel)
    [part] = partials()
    kept = part.stat().st_size
    assert 1_000_000 <= kept < len(small_files[BIG])
    small_repo.wait_idle()
    wire = small_repo.body_bytes(BIG)
    res = hubmod.download(SMALL_REPO)
    assert small_repo.body_bytes(BIG) - wire == len(small_files[BIG]) - kept
    assert res.bytes_fetched == len(small_files[BIG]) - kept  # everything else was complete already
    assert (res.path / BIG).read_bytes() == small_files[BIG]


# ---- integrity, disk ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [(BIG, "sha256"), ("tokenizer.json", "git blob id")])
def test_a_corrupted_file_is_detected_removed_and_refetched(small_repo, small_files, name, kind):
    small_repo.corrupt.add(name)
    with pytest.raises(IntegrityError, match=f"{kind}.*removed: run the download again") as ei:
        hubmod.download(SMALL_REPO)
    assert name in str(ei.value)
    blobs = repo_dir() / "blobs"
    assert partials() == [] and not any(p.name.startswith(sha256(small_files[name])) for p in blobs.iterdir())
    small_repo.corrupt.clear()
    res = hubmod.download(SMALL_REPO)
    assert (res.path / name).read_bytes() == small_files[name]


def test_a_wrong_size_cached_file_is_fetched_again(small_repo, small_files):
    res = hubmod.download(SMALL_REPO)
    blob = (res.path / BIG).resolve()
    blob.chmod(0o644)
    blob.write_bytes(small_files[BIG][:1000])  # damaged by something else
    wire = small_repo.body_bytes(BIG)
    hubmod.download(SMALL_REPO)
    assert small_repo.body_bytes(BIG) - wire == len(small_files[BIG])
    assert (res.path / BIG).read_bytes() == small_files[BIG]


def test_verify_cached_rehashes_files_already_there(small_repo, small_files):
    res = hubmod.download(SMALL_REPO)
    blob = (res.path / SHARDS[0]).resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1  # same size, different bytes
    blob.write_bytes(bytes(data))
    hubmod.download(SMALL_REPO)  # sizes match: trusted
    with pytest.raises(IntegrityError, match="sha256.*removed"):
        hubmod.download(SMALL_REPO, verify_cached=True)
    wire = small_repo.body_bytes(SHARDS[0])
    hubmod.download(SMALL_REPO, verify_cached=True)  # the bad copy is gone: fetched again, then all verified
    assert small_repo.body_bytes(SHARDS[0]) - wire == len(small_files[SHARDS[0]])
    assert (res.path / SHARDS[0]).read_bytes() == small_files[SHARDS[0]]


def test_free_disk_is_checked_before_the_weights_are_fetched(small_repo, small_files, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 3_000_000, 3_000_000))
    with pytest.raises(DiskSpaceError, match=r"needs .* MB of free disk but .* has 3\.0 MB.*HF_HUB_CACHE"):
        hubmod.download(SMALL_REPO)
    assert small_repo.body_bytes(SHARDS[0]) == small_repo.body_bytes(BIG) == 0


def test_disk_full_while_writing_is_a_disk_space_error():
    import errno

    from app.core.hub_errors import hub_error

    e = hub_error(OSError(errno.ENOSPC, "No space left on device"), repo_id="a/b", revision="main",
                  endpoint="http://x", had_token=False)
    assert isinstance(e, DiskSpaceError) and "free some space" in str(e) and "resumes" in str(e)


# ---- errors: auth, not found, network -------------------------------------------------------------------------
def test_gated_repo_401_403_then_token_from_env_or_login(hub, small_files, monkeypatch):
    hub.add_repo("org/gated", small_files, gated=True)
    with pytest.raises(HubAuthError, match="gated.*accept its license.*hf auth login") as ei:
        hubmod.download("org/gated")
    assert isinstance(ei.value, PermissionError)
    assert hub.requests[-1].status == 401
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubAuthError, match="token has no access"):
        hubmod.download("org/gated")
    assert hub.requests[-1].status == 403
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hubmod.download("org/gated").bytes_fetched > 0
    # the token `hf auth login` stores is found too (read at call time, under HF_HOME)
    monkeypatch.delenv("HF_TOKEN")
    assert hubmod.resolve_token() is None
    (Path(os.environ["HF_HOME"]) / "token").write_text(TOKEN)
    assert hubmod.resolve_token() == TOKEN


def test_private_repo_without_token_says_to_log_in(hub, small_files):
    hub.add_repo("org/private", small_files, private=True)
    with pytest.raises(HubAuthError, match="logged in.*private or gated.*hf auth login"):
        hubmod.download("org/private")


def test_unknown_repo_revision_and_bad_ids_are_not_found(small_repo):
    with pytest.raises(RepoNotFoundError, match="not found.*check the spelling"):
        hubmod.download("org/does-not-exist", token=TOKEN)
    with pytest.raises(RepoNotFoundError, match="no revision 'nope'"):
        hubmod.download(SMALL_REPO, revision="nope")
    with pytest.raises(RepoNotFoundError, match="valid repo id"):
        hubmod.list_files("not a repo id!")


def test_unsupported_repos_are_refused_before_downloading(hub, small_files):
    hub.add_repo("org/pickle-only", {"config.json": small_files["config.json"], "pytorch_model.bin": b"x" * 99})
    with pytest.raises(UnsupportedRepoError, match="pytorch_model.bin.*converts only safetensors"):
        hubmod.download("org/pickle-only")
    other = small_files["config.json"].replace(b"LlamaForCausalLM", b"MistralForCausalLM")
    hub.add_repo("org/mistral", {**small_files, "config.json": other})
    with pytest.raises(UnsupportedRepoError, match="MistralForCausalLM.*cannot convert"):
        hubmod.download("org/mistral")
    assert hub.body_bytes() == 0
    hub.hide_config = True  # the Hub does not say: config.json is read before any weights are fetched
    assert hubmod.list_files("org/mistral").architecture is None
    with pytest.raises(UnsupportedRepoError, match="MistralForCausalLM.*cannot convert"):
        hubmod.download("org/mistral")
    assert hub.body_bytes("config.json") > 0 and hub.body_bytes(SHARDS[0]) == hub.body_bytes(SHARDS[1]) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_is_connection_refused_and_cached_repos_still_work(small_repo, small_files, monkeypatch):
    hubmod.download(SMALL_REPO)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(OfflineError, match="refused the connection.*HF_ENDPOINT.*not in the local cache"):
        hubmod.download("org/elsewhere")
    res = hubmod.download(SMALL_REPO)  # unreachable Hub, cached repo: used, and said plainly
    assert res.offline and res.message.startswith("Offline:") and "refused" in res.message
    assert (res.path / BIG).read_bytes() == small_files[BIG]


def test_dns_failure_says_so(monkeypatch):
    real = socket.getaddrinfo

    def fake(host, *a, **k):
        if host == "hub.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(OfflineError, match="cannot resolve hub.invalid.*DNS"):
        hubmod.download("org/model", endpoint="http://hub.invalid")


def test_a_hub_that_does_not_answer_times_out(small_repo):
    small_repo.api_delay = 2.0
    with pytest.raises(OfflineError, match="did not answer in time"):
        hubmod.download(SMALL_REPO, timeout=0.3)


def test_offline_mode_lists_and_uses_the_cache_and_says_so(small_repo, small_files, monkeypatch):
    first = hubmod.download(SMALL_REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(small_repo.requests)
    listing = hubmod.list_files(SMALL_REPO)
    assert listing.offline and "HF_HUB_OFFLINE=1" in listing.message
    assert {f.path: f.size for f in listing.files} == {n: len(small_files[n]) for n in NEEDED}
    res = hubmod.download(SMALL_REPO)
    assert res.offline and res.path == first.path and res.bytes_fetched == 0
    with pytest.raises(OfflineError, match="offline mode is on.*not in the local cache"):
        hubmod.download("org/never-downloaded")
    with pytest.raises(OfflineError, match="Searching the Hub needs the network"):
        hubmod.search_models("smol")
    assert len(small_repo.requests) == n  # nothing went on the network


def test_search_returns_only_convertible_architectures(hub, small_files):
    llama = small_files["config.json"]
    hub.add_repo("a/smol-llama", {"config.json": llama, SHARDS[0]: small_files[SHARDS[0]]}, downloads=5)
    hub.add_repo("b/smol-qwen2", {"config.json": llama.replace(b"LlamaForCausalLM", b"Qwen2ForCausalLM"),
                                  SHARDS[0]: small_files[SHARDS[0]]}, downloads=50)
    hub.add_repo("c/smol-bert", {"config.json": llama.replace(b"LlamaForCausalLM", b"BertModel"),
                                 SHARDS[0]: small_files[SHARDS[0]]}, downloads=500)
    hub.add_repo("d/other-llama", {"config.json": llama, SHARDS[0]: small_files[SHARDS[0]]})
    found = hubmod.search_models("SMOL")
    assert [(m.repo_id, m.architecture) for m in found] == [("b/smol-qwen2", "Qwen2ForCausalLM"),
                                                            ("a/smol-llama", "LlamaForCausalLM")]
    assert found[0].downloads == 50 and found[0].n_params == len(small_files[SHARDS[0]]) // 2


# ---- CLI ------------------------------------------------------------------------------------------------------
def test_cli_download_files_search_and_exit_codes(small_repo, small_files, capsys, monkeypatch):
    assert main(["download", SMALL_REPO]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(repo_dir() / "snapshots" / small_repo.repos[SMALL_REPO].refs["main"])
    assert "9 files" in err
    assert main(["download", SMALL_REPO, "--files"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^\+ +{len(small_files[BIG]) / 1e6:.1f} MB  {BIG}$", out, re.M)
    assert re.search(r"^  +[\d.]+ k?B  pytorch_model\.bin$", out, re.M)  # listed, not '+'
    assert main(["download", "--search", "mini"]) == 0
    assert SMALL_REPO in capsys.readouterr().out
    for argv, msg in [(["download", "org/nope"], "private or gated, or does not exist"),
                      (["download", SMALL_REPO, "--revision", "v9"], "no revision 'v9'")]:
        assert main(argv) == 2
        assert msg in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", SMALL_REPO]) == 0
    assert "Offline:" in capsys.readouterr().err
    assert main(["download", "org/nope"]) == 2
    assert "offline mode is on" in capsys.readouterr().err


def test_cli_interrupted_download_exits_130_and_keeps_the_partial(small_repo, small_files, monkeypatch, capsys):
    real = hubmod.hub_cache.Transfer._check_cancel
    calls = {"n": 0}

    def interrupt(self):  # Ctrl-C arriving in the middle of the big shard
        if self.name == BIG:
            calls["n"] += 1
            if calls["n"] == 20:
                raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(hubmod.hub_cache.Transfer, "_check_cancel", interrupt)
    assert main(["download", SMALL_REPO]) == 130
    assert len(partials()) == 1 and partials()[0].stat().st_size > 0


# ---- end to end: download -> quantize -> chat -----------------------------------------------------------------
def test_download_then_quantize_then_chat(hub, smollm2_checkpoint):
    import quantizer
    from app.core import library
    from app.core.chat_types import SamplingSettings
    from app.core.engine import Engine

    ck = Path(smollm2_checkpoint)
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    hub.add_repo(repo, {p.name: p for p in ck.iterdir() if p.is_file()})
    res = hubmod.download(repo)
    assert (res.path / "model.safetensors").stat().st_size == (ck / "model.safetensors").stat().st_size
    assert hub.body_bytes() == res.bytes_fetched == sum(p.stat().st_size for p in ck.iterdir() if p.is_file())

    out = library.output_path("SmolLM2-135M-Instruct", "Q8_0")
    out.parent.mkdir(parents=True)
    conv = quantizer.convert(repo, out, "Q8_0")  # the repo id resolves to the cached snapshot
    assert conv.path == out and abs(conv.bits_per_weight - 8.5) < 0.05
    with Engine(out, n_ctx=512, n_threads=2, seed=1) as e:
        reply = e.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                       settings=SamplingSettings(greedy=True, max_tokens=16))
    assert "Paris" in reply.answer

    [group] = [g for g in library.scan() if g.name == "SmolLM2-135M-Instruct" and g.checkpoint
               and g.checkpoint.repo_id == repo]
    assert group.checkpoint.path == res.path and group.checkpoint.complete
    assert group.reference().path == out and group.reference().file_type == "Q8_0"
