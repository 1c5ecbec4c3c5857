"""The output folder of a run: refuse to mix runs, write files atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig
from ..errors import PoolftError
from .checkpoints import checkpoint_problem

CONFIG_FILE = "config.yaml"
# keys that may differ between the runs sharing one folder (continuing is the same run)
NEUTRAL_KEYS = {
    ("train", "resume_from_checkpoint"),
    ("train", "overwrite_output_dir"),
    ("train", "progress"),
    ("train", "distributed_timeout_seconds"),  # how long to wait for a peer: the same run either way
    ("train", "save_model"),  # whether the final model is written: the same training either way
    ("train", "feature_cache_dir"),  # where the cached states live: the same states either way
    ("train", "output_dir"),  # the folder itself, however it is written (relative, moved, trailing /)
}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    copy = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for section, key in NEUTRAL_KEYS:
        if isinstance(copy.get(section), dict):
            copy[section].pop(key, None)
    return copy


def holds_other_run(config: RunConfig, folder: Path) -> bool:
    """Whether ``folder``'s ``config.yaml`` records a run other than ``config`` (an unreadable one
    counts as other); the keys in ``NEUTRAL_KEYS`` may differ."""
    try:
        previous = yaml.safe_load((folder / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    return comparable(previous) != comparable(with_chosen_columns(config.to_dict(), previous))


def set_aside(folder: Path) -> Path:
    """Rename ``folder`` to the first free ``<name>.replaced-<n>`` beside it; returns the new path."""
    number = 1
    while (aside := folder.with_name(f"{folder.name}.replaced-{number}")).exists():
        number += 1
    folder.rename(aside)
    return aside


def with_chosen_columns(config: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the text column(s) the run in the folder chose from its data, where unset.

    An unset ``data.text_column`` is chosen from the data when the run starts and written to
    ``config.yaml``; the same data gives the same choice, so continuing that run is not a different run.
    """
    data, chosen = dict(config.get("data", {})), previous.get("data") or {}
    if data.get("text_column") is None:
        data["text_column"] = chosen.get("text_column")
        if data.get("text_pair_column") is None:
            data["text_pair_column"] = chosen.get("text_pair_column")
    return {**config, "data": data}


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first (what creating it would make)."""
    return [path for path in (folder, *folder.parents) if not path.exists() and not path.is_symlink()]


def remove_empty_folders(made: list[Path]) -> None:
    """Remove the folders of ``made`` (deepest first) that are still empty; stop at the first that is not."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


def write_problem(folder: Path) -> str | None:
    """Why no file can be written in ``folder`` (the system's reason), or None when one can.

    Makes the missing folders, writes and deletes a probe file, then removes the folders it made:
    a permission check alone passes for root where the file system refuses (``/proc``, read-only
    mounts).
    """
    made = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".poolft-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return error.strerror or str(error)
    finally:
        remove_empty_folders(made)
    return None


def prepare_output_dir(config: RunConfig, *, clear: bool = True) -> Path:
    """Check that ``train.output_dir`` may receive this run; clear it when overwriting was asked.

    With ``clear=False`` an overwritten run is only checked, not deleted: the training loop clears
    it (``clear_output_dir``) once the config, data and model have passed their checks, so a
    mistake found while loading them loses nothing.

    Raises:
        PoolftError: the folder holds another run, foreign files, or this run already (without
            resume), or cannot be written.
    """
    folder = Path(config.train.output_dir)
    check_resume_request(config.train.resume_from_checkpoint)
    if folder.exists() and not folder.is_dir():
        raise PoolftError(f"output_dir {folder} is a file; choose a folder path for train.output_dir")
    if folder.is_dir() and any(folder.iterdir()):
        saved = folder / CONFIG_FILE
        if not saved.is_file():
            raise PoolftError(
                f"output_dir {folder} already holds files that are not a poolft run; choose another train.output_dir"
            )
        if config.train.overwrite_output_dir:
            if clear:
                clear_output_dir(folder)
        else:
            if holds_other_run(config, folder):
                raise PoolftError(
                    f"output_dir {folder} holds a different run; choose another train.output_dir or pass "
                    "--overwrite_output_dir true"
                )
            if config.train.resume_from_checkpoint is None:
                raise PoolftError(
                    f"output_dir {folder} already holds this run; pass --resume_from_checkpoint latest to continue "
                    "it or --overwrite_output_dir true to start again"
                )
    problem = write_problem(folder)
    if problem:
        raise PoolftError(f"cannot write to output_dir {folder} ({problem}); choose a writable folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: the run folders this process holds a lock on (``lock_run_folder``): resolved path -> descriptor
_locked: dict[str, int] = {}


def lock_run_folder(folder: Path) -> None:
    """Hold an exclusive ``flock`` on ``folder`` while this process trains into it, so that a second
    run started on the same folder (the same command twice, or a resume while the run still goes
    on) stops before it touches anything. The lock is on the folder itself (no lock file), and the
    system drops it when the process ends, even when it is killed; ``release_run_folders`` drops it
    at the end of a run. Where locks are not available (Windows, some network file systems) the run
    goes on without one.

    Raises:
        PoolftError: another process holds the lock on ``folder``.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return
    key = str(folder.resolve())
    if key in _locked:
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise PoolftError(
            f"output_dir {folder} is in use by another poolft run that is still writing there; wait for it to "
            "end (or stop it), or choose another train.output_dir"
        ) from None
    except OSError:  # a file system without locks
        os.close(descriptor)
        return
    _locked[key] = descriptor


def release_run_folders() -> None:
    """Drop every lock ``lock_run_folder`` took in this process (closing a descriptor drops its lock)."""
    while _locked:
        os.close(_locked.popitem()[1])


def clear_output_dir(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete everything in ``folder`` (a poolft run that ``--overwrite_output_dir true`` replaces)
    except the entries named in ``keep`` (LP-FT's head, trained into the folder by this same run)."""
    for child in folder.iterdir():
        if child.name in keep:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def check_resume_request(request: str | None) -> None:
    """An explicit checkpoint path must be an intact checkpoint before the run touches any folder."""
    if request is None or request == "latest":
        return
    folder = Path(request)
    problem = checkpoint_problem(folder) if folder.is_dir() else "no such folder"
    if problem:
        raise PoolftError(
            f"checkpoint {folder} cannot be used: {problem}; pass an output_dir/checkpoints/step-N folder or 'latest'"
        )


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def save_model_atomically(model: Any, preprocessor: Any, folder: Path, extra_files: dict[str, str]) -> None:
    """``save_pretrained`` model + tokenizer/processor, then move each file into ``folder``.

    Everything is first written to a temporary sibling folder, so a full disk or a crash leaves
    the previous files in ``folder`` intact rather than a half-written model.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-model-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    temporary = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-model-"))
    try:
        model.save_pretrained(temporary, safe_serialization=True)
        preprocessor.save_pretrained(temporary)
        for name, text in extra_files.items():
            (temporary / name).write_text(text, encoding="utf-8")
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise PoolftError(
            f"could not save the model to {folder} ({error.strerror}); free disk space and resume"
        ) from None
    for path in temporary.iterdir():
        os.replace(path, folder / path.name)
    temporary.rmdir()
