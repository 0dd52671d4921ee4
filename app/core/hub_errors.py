"""huggingface_hub / httpx / OS failures -> DistillDesk's typed errors, with messages that say what to do.

Kept apart from :mod:`app.core.hub` so the whole mapping can be read (and tested) in one place.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

from .errors import DiskSpaceError, HubAuthError, HubError, OfflineError, RepoNotFoundError

_LOGIN = "set HF_TOKEN to a token from https://huggingface.co/settings/tokens or run `hf auth login`"


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]


def is_transient(e: BaseException) -> bool:
    """Worth another ranged request: the connection broke or stalled mid-transfer (not refused, not HTTP)."""
    import httpx

    return isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout, httpx.WriteError))


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def hub_error(e: BaseException, *, repo_id: str | None, revision: str | None, endpoint: str,
              had_token: bool) -> HubError | DiskSpaceError | None:
    """The typed error for ``e``, or None when ``e`` is not a Hub/network/disk failure (a bug: re-raise it)."""
    import httpx
    from huggingface_hub import errors as hfe

    what = repo_id or "the Hub"
    page = f"{endpoint}/{repo_id}" if repo_id else endpoint
    if isinstance(e, hfe.OfflineModeIsEnabled):
        return OfflineError("offline mode is on (HF_HUB_OFFLINE=1) and this needs the Hub; unset it to go online")
    if isinstance(e, hfe.GatedRepoError):
        if had_token:
            return HubAuthError(f"{what} is gated and your token has no access yet: open {page}, accept the "
                                f"model's license with that account, then try again")
        return HubAuthError(f"{what} is gated: log in on {page} and accept its license, then {_LOGIN}")
    if isinstance(e, hfe.RevisionNotFoundError):
        return RepoNotFoundError(f"{what} has no revision {revision!r}: check the branch, tag or commit "
                                 f"(omit --revision for the main branch)")
    if isinstance(e, hfe.RemoteEntryNotFoundError):
        return RepoNotFoundError(f"a file of {what} is missing on the Hub ({e.response.url}); the repo changed "
                                 f"while downloading: run the download again")
    if isinstance(e, hfe.HfHubHTTPError):
        return _http_error(e, what, page, had_token)
    if isinstance(e, hfe.HFValidationError):
        return RepoNotFoundError(f"{repo_id!r} is not a valid repo id ({e}); use the form ORG/NAME, e.g. "
                                 f"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    if isinstance(e, httpx.TimeoutException):
        return OfflineError(f"{endpoint} did not answer in time ({type(e).__name__}): the network is slow or "
                            f"down; try again later (a download resumes where it stopped)")
    if isinstance(e, (httpx.ConnectError, httpx.NetworkError, httpx.RemoteProtocolError)):
        return _connect_error(e, endpoint)
    if isinstance(e, httpx.UnsupportedProtocol) or isinstance(e, httpx.InvalidURL):
        return HubError(f"the Hub address {endpoint!r} is not a valid http(s) URL; fix HF_ENDPOINT")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"the disk filled up while downloading {what} ({e}); free some space and run the "
                              f"download again: it resumes where it stopped")
    return None


def _http_error(e: BaseException, what: str, page: str, had_token: bool) -> HubError:
    status = _status(e)
    from huggingface_hub import errors as hfe

    if status in (401, 403):
        if had_token:
            return HubAuthError(f"the Hub refused your token for {what} (HTTP {status}): the repo is private or "
                                f"gated and this account has no access, or the token is invalid or expired; "
                                f"check it on {page}, or {_LOGIN}")
        return HubAuthError(f"{what} needs you to be logged in (HTTP {status}): it is private or gated, or does "
                            f"not exist; check the id on {page}, accept the license if it is gated, then {_LOGIN}")
    if status == 404 or isinstance(e, hfe.RepositoryNotFoundError):
        return RepoNotFoundError(f"{what} was not found on the Hub ({page}): check the spelling of the repo id")
    if status == 429:
        return HubError(f"the Hub is rate-limiting requests (HTTP 429); wait a few minutes and try again"
                        f"{'' if had_token else ' (logged-in users get higher limits: ' + _LOGIN + ')'}")
    if status is not None and status >= 500:
        return HubError(f"the Hub had a server error (HTTP {status}) for {what}; try again later (a download "
                        f"resumes where it stopped)")
    return HubError(f"the Hub answered HTTP {status} for {what}: {str(e).splitlines()[0]}")


def _connect_error(e: BaseException, endpoint: str) -> OfflineError:
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    chain = list(_chain(e))
    text = " ".join(str(x) for x in chain).lower()
    if any(isinstance(x, socket.gaierror) for x in chain) or "name or service not known" in text or \
            "temporary failure in name resolution" in text or "nodename nor servname" in text:
        return OfflineError(f"cannot resolve {host} (DNS failure): you seem to be offline, or a proxy/firewall "
                            f"blocks it; check the connection and try again (HF_HUB_OFFLINE=1 works from the "
                            f"cache only)")
    if any(isinstance(x, ConnectionRefusedError) for x in chain) or "connection refused" in text:
        return OfflineError(f"{host} refused the connection: the server is down or HF_ENDPOINT points at the "
                            f"wrong place; try again later or check HF_ENDPOINT")
    return OfflineError(f"cannot reach {host} ({type(e).__name__}: {e}); check the internet connection and try "
                        f"again (a download resumes where it stopped)")
