"""Talking to the Hugging Face Hub, defined once: one-commit uploads and one-line errors.

Every part that writes to the Hub (a run's push, a fitted runner's push) goes through :func:`commit_files`: ONE
``HfApi.create_commit`` — never ``upload_folder`` (with hf_xet it may split a push into several commits). Every
error of the Hub becomes a one-line HubError that names the repo, the revision and the file, says what failed and
how (HTTP status and the Hub's own message), and never carries a token (:func:`scrub`). Errors that are not the
Hub's (a bug, a KeyboardInterrupt, this package's own InputError) pass through unchanged.

Example::

    with hub_errors("me/run", revision=None, token=None, what="download", filename="masc/report.json"):
        path = hf_hub_download("me/run", "masc/report.json")
    commit_files("me/run", {"masc/x.json": b"{}"}, replace_under="masc/", title="x")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from masc_probe.errors import HubError, InputError, MascProbeError

__all__ = ["check_repo_id", "commit_files", "hub_errors", "one_line", "scrub"]

# The HTTP client's connection errors, by (top-level module, class name) anywhere in the exception's class
# hierarchy: huggingface_hub moved from requests to httpx to httpx2 over its versions, and the one in use is the one
# whose error arrives, so nothing needs importing (or guessing) up front.
_TRANSPORT_ERRORS = {("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")}


def one_line(text: str) -> str:
    return " ".join(text.split())


def check_repo_id(repo_id: str) -> None:
    """Refuse anything but ``"user/name"``.

    Raises:
        InputError: naming what arrived.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InputError(f"repo_id must look like 'user/name', got {repo_id!r}: {one_line(str(exc))}") from None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InputError(f"repo_id must look like 'user/name', got {repo_id!r}")


def scrub(message: str, token: str | None) -> str:
    """*message* with the given token and the locally stored one replaced by ``***``."""
    from huggingface_hub.utils import get_token

    for secret in {token, get_token()} - {None, ""}:
        message = message.replace(secret, "***")  # type: ignore[arg-type]
    return message


def commit_files(repo_id: str, files: Mapping[str, str | os.PathLike[str] | bytes], *, replace_under: str,
                 title: str, description: str | None = None, private: bool = False, revision: str | None = None,
                 token: str | None = None, create_pr: bool = False) -> str:
    """Upload *files* to *repo_id* in one commit, deleting in the same commit what else lies under *replace_under*.

    The repo is created when missing (an existing one keeps its visibility), and the branch *revision* from
    ``main`` when missing. Binary files take the Hub's LFS path as its ``.gitattributes`` says.

    Args:
        repo_id: ``"user/name"`` (checked by the caller).
        files: ``{path in repo: local file or bytes}``.
        replace_under: A folder prefix in the repo (``"masc/"``): files under it that *files* lacks are deleted.
        title: The commit title.
        description: The commit description.
        private, revision, token, create_pr: As :meth:`huggingface_hub.HfApi.create_commit` and ``create_repo``.

    Returns:
        The commit URL (ending in the commit oid), or the pull-request URL with *create_pr*.

    Raises:
        HubError: If the Hub refuses or fails (one line; nothing local is written, so a retry is safe).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    from masc_probe._version import __version__

    api = HfApi(token=token, library_name="masc-probe", library_version=__version__)
    with hub_errors(repo_id, revision=revision, token=token, what="push"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, constants.DEFAULT_REVISION):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        present = api.list_repo_files(repo_id, revision=revision)
        ops: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=remote, path_or_fileobj=source if isinstance(source, bytes)
                               else str(Path(source))) for remote, source in files.items()]
        ops += [CommitOperationDelete(path_in_repo=p) for p in present
                if p.startswith(replace_under) and p not in files]
        info = api.create_commit(repo_id, ops, commit_message=title, revision=revision, create_pr=create_pr,
                                 commit_description=description)
    return str(info.pr_url if create_pr and info.pr_url else info.commit_url)


@contextlib.contextmanager
def hub_errors(repo_id: str, *, revision: str | None, token: str | None, what: str,
               filename: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's errors inside the block into one-line HubErrors that name the repo, revision and file.

    Args:
        repo_id: The repo the block works on.
        revision: The revision asked for (None: the default branch).
        token: The token in use, scrubbed from messages (the stored one is scrubbed too).
        what: ``"push"`` or the verb of a read (``"download"``).
        filename: The file the block reads, for messages about a missing one.

    Raises:
        HubError: For every error of the Hub, of the connection, or of the client's own checks; any other error
            (a ValueError of our own code inside the block included) passes through unchanged.
    """
    try:
        yield
    except MascProbeError:
        raise  # already one of ours (an InputError is a ValueError too, which would read as the Hub's refusal)
    except Exception as exc:
        message = _message(exc, repo_id, revision=revision, what=what, filename=filename)
        cause = exc.__cause__
        if message is None and type(exc) is RuntimeError and isinstance(cause, Exception):
            # huggingface_hub wraps a failed LFS PUT or verify in RuntimeError("Error while uploading '<path>' to
            # the Hub.") with the HTTP error as its __cause__: the cause says what happened, the wrapper to what.
            message = _message(cause, repo_id, revision=revision, what=what, filename=filename)
            if message is not None:
                message += f" ({one_line(str(exc)).rstrip('.')})"
        if message is None:
            raise
    else:
        return
    raise HubError(scrub(message, token)) from None


def _is_transport_error(exc: BaseException) -> bool:
    """Whether *exc* says the Hub could not be reached (a connection failure, or offline mode)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return True
    return any((k.__module__.partition(".")[0], k.__name__) in _TRANSPORT_ERRORS for k in type(exc).__mro__)


def _raised_by_hub_client(exc: BaseException) -> bool:
    """Whether huggingface_hub raised *exc*: its own exception class, or raised from its own code (the innermost
    frame of the traceback). A ValueError from anything else in the block (our code, numpy, the user's) is not the
    Hub's refusal."""
    if type(exc).__module__.partition(".")[0] == "huggingface_hub":
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0] == "huggingface_hub"


def _message(exc: Exception, repo_id: str, *, revision: str | None, what: str, filename: str | None) -> str | None:
    """The one-line message for one of huggingface_hub's errors; None for an error that is not the Hub's."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision or 'main'!r} not found in repo {repo_id!r}"
    if isinstance(exc, RepositoryNotFoundError):
        return (f"repo {repo_id!r} not found on {constants.ENDPOINT}, or the current token cannot access it "
                "(check the name, or log in with `hf auth login` / set HF_TOKEN)")
    if isinstance(exc, LocalEntryNotFoundError):
        # hf_hub_download wraps a failed metadata request (an HTTP refusal, a dropped connection) in this error
        # when the file is not cached: the cause says what the Hub answered.
        cause = exc.__cause__
        why = None if not isinstance(cause, Exception) or isinstance(cause, LocalEntryNotFoundError) else _message(
            cause, repo_id, revision=revision, what=what, filename=filename)
        if why is not None:
            return f"{why} ({filename or 'the file'} is not in the local cache either)"
        return (f"{filename or 'a file'} of {repo_id!r}{at} is not in the local cache and the Hub cannot be "
                f"reached (offline mode {'on' if constants.HF_HUB_OFFLINE else 'off'})")
    if isinstance(exc, EntryNotFoundError):
        return f"repo {repo_id!r}{at} has no {filename or 'such file'} (was it pushed with masc-probe?)"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        detail = exc.server_message or str(exc).split("\n")[0]
        verb = "push to" if what == "push" else f"{what} from"
        message = f"{verb} {repo_id!r}{at} failed with HTTP {status}: {one_line(detail)}"
        return message + ("; nothing local was changed, so retrying is safe" if what == "push" else "")
    if isinstance(exc, ValueError) and _raised_by_hub_client(exc):  # its own refusals, e.g. card metadata the Hub's
        return f"the Hub refused the {what} for {repo_id!r}{at}: {one_line(str(exc))}"  # validator rejects
    if _is_transport_error(exc):
        return f"cannot reach the Hub at {constants.ENDPOINT} for {what} of {repo_id!r}: {one_line(str(exc))}"
    return None
