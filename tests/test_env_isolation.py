"""Tests never depend on the caller's ``HF_*``, ``XDG_*`` or ``DISTILLDESK_*`` variables (tests/conftest.py).

The proof runs environment-sensitive tests in a pytest subprocess whose environment is hostile: offline mode on,
a Hub endpoint and token that do not exist, cache/data folders that are files.  They must pass all the same.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_MARK = "hostile-caller-value"


def test_the_callers_environment_does_not_reach_a_test():
    """Run inside the hostile subprocess below (and harmlessly in a normal run)."""
    import huggingface_hub.constants as hfc

    from app.core import hub, paths

    leaked = {k: v for k, v in os.environ.items() if HOSTILE_MARK in v}
    assert leaked == {}
    assert not hfc.HF_HUB_OFFLINE  # frozen when huggingface_hub was imported: the scrub ran before that
    assert not hub.is_offline()
    assert hub.endpoint_url() == hub.DEFAULT_ENDPOINT
    assert hub.resolve_token() is None
    assert Path(os.environ["HF_HOME"]).name == "hf"
    assert paths.data_dir().is_dir()


def test_env_sensitive_tests_pass_with_a_hostile_caller_environment(tmp_path):
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text(HOSTILE_MARK)
    env = {k: v for k, v in os.environ.items()}
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_ENDPOINT": f"http://hub.invalid/{HOSTILE_MARK}",
        "HF_TOKEN": HOSTILE_MARK, "HF_HOME": str(not_a_dir), "HF_HUB_CACHE": str(not_a_dir),
        "XDG_CACHE_HOME": str(not_a_dir), "XDG_DATA_HOME": str(not_a_dir), "XDG_CONFIG_HOME": str(not_a_dir),
        "DISTILLDESK_DATA_DIR": str(not_a_dir), "DISTILLDESK_CACHE_DIR": str(not_a_dir),
        "DISTILLDESK_DEBUG": HOSTILE_MARK,
    })
    # the fixture cache is the harness's own setting: keep it where this run has it, so nothing is rebuilt
    from tests.conftest import TEST_CACHE

    env["DISTILLDESK_TEST_CACHE"] = TEST_CACHE
    tests = [f"{__file__}::test_the_callers_environment_does_not_reach_a_test",
             "tests/app/test_hub.py::test_dns_failure_says_so",
             "tests/app/test_hub.py::test_download_fetches_only_needed_files_into_the_standard_cache",
             "tests/app/test_library.py::test_empty_library"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(tests)} passed" in proc.stdout
