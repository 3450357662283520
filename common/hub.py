"""Resolving "a local directory or a Hugging Face Hub repo id" to a local directory.

Every ``from_pretrained`` in the toolkit goes through :func:`resolve_pretrained_dir`, so the Hub
client's cache, ``HF_HUB_OFFLINE``, tokens and revisions behave the same everywhere, and a model
that cannot be had fails with one message that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable


class ModelNotAvailableError(OSError):
    """A model id that is neither a local path nor reachable on (or cached from) the Hub."""


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def not_available_message(repo_id: str, reason: str) -> str:
    mode = "HF_HUB_OFFLINE=1 is set" if is_offline() else "the Hugging Face Hub could not be reached"
    return (
        f"cannot load {repo_id!r}: it is not a local path, and {mode} ({reason}). Either pass a local "
        f"directory, or download it once where the Hub is reachable (`hf download {repo_id}`) into the "
        f"cache this process uses (HF_HOME / HF_HUB_CACHE), or, for a gated or private repo, log in or "
        f"set HF_TOKEN."
    )


def resolve_pretrained_dir(
    path_or_repo_id: str | os.PathLike,
    required_files: Iterable[str] = (),
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Returns a local directory holding ``required_files``.

    A path that exists is used as is. Anything else is taken as a Hub repo id and fetched with
    ``huggingface_hub.snapshot_download``, which serves it from the local cache when
    ``HF_HUB_OFFLINE=1`` or the network is down.
    """
    required = list(required_files)
    local = Path(os.fspath(path_or_repo_id)).expanduser()
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{local} is a file; expected a directory saved by save_pretrained()")
        missing = [f for f in required if not (local / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{local} is missing {', '.join(missing)}")
        return local
    repo_id = str(path_or_repo_id)
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no such directory: {repo_id}")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        directory = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                allow_patterns=allow_patterns,
            )
        )
    except GatedRepoError as e:
        raise ModelNotAvailableError(not_available_message(repo_id, "the repo is gated")) from e
    except RepositoryNotFoundError as e:
        raise ModelNotAvailableError(not_available_message(repo_id, "no such repo, or it is private")) from e
    except RevisionNotFoundError as e:
        raise ModelNotAvailableError(not_available_message(repo_id, f"no revision {revision!r}")) from e
    except HFValidationError as e:
        raise ValueError(f"{repo_id!r} is neither an existing path nor a valid Hub repo id") from e
    except (LocalEntryNotFoundError, OSError) as e:
        raise ModelNotAvailableError(not_available_message(repo_id, "not in the local cache")) from e
    missing = [f for f in required if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"Hub repo {repo_id!r} has no {', '.join(missing)}")
    return directory


def hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that :func:`resolve_pretrained_dir` understands."""
    return {k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs}


def push_folder(save: Callable[[Path], Path], repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload") -> str:
    """``save(dir)`` into a temporary directory, then one Hub commit of that folder; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(Path(tmp) / "upload")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(info)
