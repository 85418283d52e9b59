"""Checkpoints on the Hugging Face Hub: ``hf://ORG/REPO`` trajectories and ``hf://ORG/REPO@REV`` checkpoints.

Syntax (as ``huggingface_hub``'s ``HfFileSystem``): ``hf://ORG/REPO[@REVISION][/SUBFOLDER]``; a revision
that contains ``/`` is written URL-encoded (``refs%2Fpr%2F1``).

* As a **checkpoint** (:func:`resolve_checkpoint`, used by
  :func:`rlvr_linear.io.checkpoints.find_model_dir`): the revision (default ``main``) and subfolder are
  downloaded into the Hub cache and the local snapshot folder is returned.
* As a **trajectory** (:func:`list_checkpoints`, used by :func:`rlvr_linear.io.checkpoints.discover`): the
  steps are the repository's branches and tags named ``step_N``, ``stepN``, ``step-N``, ``global_step_N``
  or ``checkpoint-N`` (RELEX publishes ``step_N`` branches, Pythia ``stepN``); if it has none, the
  subfolders so named of the revision (default ``main``). Each step is fetched only when first read.

Only safetensors, config and tokenizer files are fetched (:data:`ALLOW_PATTERNS`). Everything goes through
``huggingface_hub``: its cache (``HF_HUB_CACHE`` / ``HF_HOME``), its token, its progress bars and
``HF_HUB_OFFLINE=1``, in which case refs and files come from the cache alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from ..errors import RlvrLinearError
from .containment import contained, unsafe_part

PREFIX = "hf://"
#: what is fetched of a checkpoint: weights (safetensors), configs and tokenizer files
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*config.json",  # config.json, generation_config.json, tokenizer_config.json
    "*tokenizer*",  # tokenizer.json, tokenizer.model, rlvr_linear_tokenizer.json
    "*special_tokens_map.json",
    "*added_tokens.json",
    "*vocab.json",
    "*vocab.txt",
    "*merges.txt",
    "*chat_template.jinja",
    "*chat_template.json",
]

_SOURCE = re.compile(r"^hf:/{1,2}(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^/\s]+))?(?:/(?P<sub>[^@\s]*?))?/?$")
#: one part of a repository id, as the Hub allows (which also forbids ``--`` and ``..`` anywhere in the id)
_REPO_PART = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)
_STEP_NAMES = [
    re.compile(p) for p in (r"^step_?(\d+)$", r"^step-(\d+)$", r"^global_step_(\d+)$", r"^checkpoint-(\d+)$")
]


def is_hub_source(source: object) -> bool:
    """True for ``hf://...`` (also ``hf:/...``, what ``pathlib.Path`` makes of it)."""
    return str(source).startswith("hf:/")


def step_of_name(name: str) -> int | None:
    """The step in a ref or folder name: ``step_N``, ``stepN``, ``step-N``, ``global_step_N``, ``checkpoint-N``."""
    for pat in _STEP_NAMES:
        m = pat.match(name)
        if m:
            return int(m.group(1))
    return None


@dataclass(frozen=True)
class HubSource:
    """One place in a Hub model repository: ``repo_id`` at ``revision`` (None: ``main``), under ``subfolder``."""

    repo_id: str
    revision: str | None = None
    subfolder: str = ""

    def __post_init__(self) -> None:
        """Refuse, before any network or disk access, parts that could lead out of the Hub cache: a repository id
        other than ``ORG/REPO`` (letters, digits, ``_.-``; no ``--`` or ``..``), a revision or subfolder that is
        absolute or has a ``..`` component, NUL or control characters (:func:`~rlvr_linear.io.containment.unsafe_part`).
        """
        rid = str(self.repo_id)
        parts, why = rid.split("/"), None
        if len(parts) != 2 or not all(_REPO_PART.fullmatch(q) for q in parts) or "--" in rid or ".." in rid:
            why = f"repository id {self.repo_id!r} is not ORG/REPO"
        elif self.revision is not None and unsafe_part(self.revision):
            why = f"revision {self.revision!r}: {unsafe_part(self.revision)}"
        elif self.subfolder and unsafe_part(self.subfolder):
            why = f"subfolder {self.subfolder!r}: {unsafe_part(self.subfolder)}"
        if why:
            raise RlvrLinearError(f"{self}: not a Hub source ({why})")

    @classmethod
    def parse(cls, source: str | Path) -> HubSource:
        m = _SOURCE.match(str(source))
        if not m:
            raise RlvrLinearError(
                f"{source}: not a Hub source; expected hf://ORG/REPO, hf://ORG/REPO@REVISION or "
                "hf://ORG/REPO[@REVISION]/SUBFOLDER"
            )
        rev = unquote(m.group("rev")) if m.group("rev") else None
        return cls(m.group("repo"), rev, (m.group("sub") or "").strip("/"))

    def __str__(self) -> str:
        s = PREFIX + self.repo_id
        if self.revision is not None:
            s += "@" + quote(self.revision, safe="")
        return s + (f"/{self.subfolder}" if self.subfolder else "")

    def child(self, revision: str | None = None, subfolder: str | None = None) -> HubSource:
        return HubSource(
            self.repo_id,
            self.revision if revision is None else revision,
            self.subfolder if subfolder is None else subfolder,
        )

    def patterns(self) -> tuple[list[str], list[str] | None]:
        """``(allow_patterns, ignore_patterns)`` for this subfolder (at the root: top-level files only)."""
        if self.subfolder:
            return [f"{self.subfolder}/{p}" for p in ALLOW_PATTERNS], None
        return list(ALLOW_PATTERNS), ["*/*"]

    def fetch(self, local_files_only: bool = False) -> Path:
        """Download (or find in the cache) this checkpoint's files; returns the local folder."""
        from huggingface_hub import snapshot_download

        allow, ignore = self.patterns()
        try:
            root = snapshot_download(
                self.repo_id,
                revision=self.revision,
                allow_patterns=allow,
                ignore_patterns=ignore,
                local_files_only=local_files_only,
            )
        except Exception as e:  # noqa: BLE001 - huggingface_hub's many error types, re-raised with the source
            raise RlvrLinearError(f"{self}: cannot fetch from the Hub ({_describe(e)})") from None
        path = contained(root, self.subfolder, self) if self.subfolder else Path(root)  # inside the snapshot
        if not path.is_dir():
            raise RlvrLinearError(f"{self}: no folder {self.subfolder!r} in this revision")
        return path


def _describe(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_checkpoint(source: str | Path) -> Path:
    """The local folder of the checkpoint ``hf://ORG/REPO[@REV][/SUBFOLDER]`` (fetched if needed)."""
    return HubSource.parse(source).fetch()


# --------------------------------------------------------------------------------------------------
# Trajectories


def _refs(src: HubSource) -> list[str]:
    """Branch and tag names of the repository: from the Hub, or from the cache when offline / unreachable."""
    if not _offline():
        from huggingface_hub import HfApi

        try:
            refs = HfApi().list_repo_refs(src.repo_id)
            return [r.name for r in (*refs.branches, *refs.tags)]
        except Exception as e:  # noqa: BLE001 - fall back to the cache, as huggingface_hub itself does
            cached = _cached_refs(src)
            if cached is None:
                raise RlvrLinearError(f"{src}: cannot list the repository's revisions ({_describe(e)})") from None
            return cached
    cached = _cached_refs(src)
    if cached is None:
        raise RlvrLinearError(
            f"{src}: not in the Hugging Face cache and HF_HUB_OFFLINE is set (download it once online)"
        )
    return cached


def _cached_refs(src: HubSource) -> list[str] | None:
    from huggingface_hub import constants, scan_cache_dir

    try:
        info = scan_cache_dir(constants.HF_HUB_CACHE)  # (its own default is frozen when first imported)
    except Exception:  # noqa: BLE001 - no cache at all
        return None
    for repo in info.repos:
        if repo.repo_id == src.repo_id and repo.repo_type == "model":
            return sorted({ref for rev in repo.revisions for ref in rev.refs})
    return None


def _subfolders(src: HubSource) -> list[str]:
    """Names of the folders directly under ``src.subfolder`` at ``src.revision``."""
    online_error = ""
    if not _offline():
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFolder

        try:
            tree = HfApi().list_repo_tree(src.repo_id, path_in_repo=src.subfolder or None, revision=src.revision)
            return [Path(e.path).name for e in tree if isinstance(e, RepoFolder)]
        except Exception as e:  # noqa: BLE001 - fall back to the cached snapshot below
            online_error = f"listing it on the Hub failed ({_describe(e)}); "
    from huggingface_hub import snapshot_download

    try:
        root = Path(snapshot_download(src.repo_id, revision=src.revision, local_files_only=True))
    except Exception as e:  # noqa: BLE001
        raise RlvrLinearError(f"{src}: {online_error}not found in the Hugging Face cache ({_describe(e)})") from None
    base = root / src.subfolder if src.subfolder else root
    return [p.name for p in base.iterdir() if p.is_dir()] if base.is_dir() else []


def list_checkpoints(source: str | Path) -> list[tuple[int, HubSource]]:
    """The steps of the Hub trajectory ``source`` and where each lives, sorted by step (nothing downloaded).

    Revisions named like steps win; without any (or with an explicit ``@REV`` or subfolder), the step-named
    subfolders of that revision are used.
    """
    src = HubSource.parse(source)
    found: dict[int, HubSource] = {}
    if src.revision is None and not src.subfolder:
        for ref in _refs(src):
            step = step_of_name(ref)
            if step is not None:
                if step in found:
                    raise RlvrLinearError(f"{src}: revisions {found[step].revision!r} and {ref!r} are both step {step}")
                found[step] = src.child(revision=ref)
    if not found:
        for name in _subfolders(src):
            step = step_of_name(name)
            if step is not None:
                if step in found:
                    raise RlvrLinearError(f"{src}: folders {found[step].subfolder!r} and {name!r} are both step {step}")
                found[step] = src.child(subfolder=f"{src.subfolder}/{name}".strip("/"))
    if not found:
        raise RlvrLinearError(
            f"{src}: no checkpoints found (looked for branches or tags, then folders, named step_N, stepN, "
            "global_step_N or checkpoint-N); for one checkpoint use hf://ORG/REPO@REVISION"
        )
    return sorted(found.items())
