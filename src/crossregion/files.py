"""Files a command writes: output paths checked before any work, atomic writes, failures that
name the file and the cause.

Every command checks its ``--output`` with ``check_output_folder`` / ``check_output_file`` first,
so a wrong path costs nothing. Every whole file is written by ``write_bytes_atomically``: to
``.<name>.tmp<pid>`` next to it, then renamed over it, so a reader (or a resumed run) sees the
old file or the new one, never half of one. A temp file left by a killed process is removed by
``remove_stale_temp_files`` when the folder's owner resumes. A run folder has one writer at a
time (``exclusive_writer``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# ``.<name>.tmp<pid>``: what write_bytes_atomically writes before the rename.
_TEMP_NAME = re.compile(r"^\..+\.tmp\d+$")

_WRITE_FAILURE_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the limit on file size, `ulimit -f`, was reached)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class OutputPathError(ValueError):
    """An output path that cannot be used; the message names it and why."""


class WriteFailedError(OSError):
    """A file could not be written; the message names the file and the cause."""


# The lock file of a folder being written (``exclusive_writer``); it holds the writer's PID.
LOCK_NAME = ".crossregion.lock"


def check_output_folder(path: str | Path, option: str = "--output") -> Path:
    """``path`` as a folder to write into: absent (created later) or an existing folder.

    Raises:
        OutputPathError: ``path`` or a folder above it is an existing file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(
            f"{option} {path} is an existing file, but a folder is expected there; "
            "choose another path or move the file away"
        )
    _check_parents(path, option)
    return path


def check_output_file(path: str | Path, option: str = "--output") -> Path:
    """``path`` as a file to write: absent or an existing file (replaced).

    Raises:
        OutputPathError: ``path`` is an existing folder, or a folder above it is a file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(
            f"{option} {path} is an existing folder, but a file is expected there; name the file to write"
        )
    _check_parents(path, option)
    return path


def check_output_outside(path: Path, folder: Path, option: str, folder_option: str, why: str) -> None:
    """Refuse an output that is ``folder`` (an input) or lies inside it; ``why`` says what would go wrong.

    Raises:
        OutputPathError: naming both paths.
    """
    output, inside = Path(path).resolve(), Path(folder).resolve()
    if output == inside or output.is_relative_to(inside):
        raise OutputPathError(f"{option} {path} lies inside {folder_option} {folder}: {why}; choose another folder")


def check_writable_folder(path: str | Path, option: str = "--output") -> Path:
    """``check_output_folder``, then create the folder and write a probe file into it, so that a
    read-only or full output fails before the work, not after it.

    Raises:
        OutputPathError: as ``check_output_folder``.
        WriteFailedError: nothing can be written there; the message names the folder and the cause.
    """
    path = check_output_folder(path, option)
    probe = path / f".write-probe.tmp{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"probe")
        probe.unlink()
    except OSError as error:
        raise WriteFailedError(f"cannot write into {option} {path}: {describe_write_failure(error)}") from error
    return path


def _check_parents(path: Path, option: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{option} {path}: {parent} is a file, so nothing can be written under it")
            return


def describe_write_failure(error: OSError) -> str:
    """The cause of a failed write in words (disk full, file too large, ...)."""
    return _WRITE_FAILURE_CAUSES.get(error.errno, error.strerror or str(error))


def write_bytes_atomically(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename; never leaves half a file.

    Raises:
        WriteFailedError: the write failed (disk full, file too large, ...); the temp file is gone.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as error:
        raise WriteFailedError(f"cannot write {path}: {describe_write_failure(error)}") from error
    finally:
        temp.unlink(missing_ok=True)


def loader_workers(requested: int) -> int:
    """The DataLoader worker processes to start for ``requested``: none under a limit on file size.

    Workers hand each batch over through shared-memory files, which ``ulimit -f`` caps like any
    file, so under a limit they fail with a traceback from inside torch; decoding in the main
    process gives the same results, only slower.
    """
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if requested > 0 and limit != resource.RLIM_INFINITY:
        logging.getLogger(__name__).warning(
            "a file-size limit (ulimit -f) is set, and DataLoader workers pass images through shared-memory "
            "files it would cut: decoding in the main process instead of %d workers",
            requested,
        )
        return 0
    return requested


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a file cut short or edited by hand is an error naming it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON (cut short, or edited?): {error}") from error


def write_text_atomically(path: str | Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def save_torch_atomically(payload: Any, path: str | Path) -> None:
    """``torch.save`` into memory, then ``write_bytes_atomically``.

    Serialising to memory first lets a failed write report its errno: torch's own file writer
    turns it into "[enforce fail at inline_container.cc] unexpected pos", which names neither
    the file nor the cause.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomically(path, buffer.getbuffer())


def link_atomically(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source``, replaced atomically."""
    temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    except OSError as error:
        raise WriteFailedError(f"cannot write {target}: {describe_write_failure(error)}") from error
    finally:
        temp.unlink(missing_ok=True)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log); a failure names the file and the cause."""
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise WriteFailedError(f"cannot write {path}: {describe_write_failure(error)}") from error


def is_temp_file(path: Path) -> bool:
    """True for a ``.<name>.tmp<pid>`` file of ``write_bytes_atomically``."""
    return bool(_TEMP_NAME.match(path.name)) and path.is_file()


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.tmp<pid>`` files a killed writer left under ``folder``; returns them."""
    stale = [path for path in Path(folder).rglob(".*.tmp*") if is_temp_file(path)]
    for path in stale:
        path.unlink()
    return stale


@contextlib.contextmanager
def exclusive_writer(folder: str | Path, option: str = "--output") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (created if absent) while the block runs.

    Two processes writing one run folder interleave its logs and overwrite each other's
    checkpoints, so a second writer is refused, naming the holder's PID. The operating system
    releases the lock when its holder dies, so a killed run never leaves the folder locked; the
    lock file holds the PID and is removed on release.

    Raises:
        OutputPathError: another process holds the folder.
        WriteFailedError: the lock file cannot be written (read-only folder, disk full, ...).
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(descriptor)
                raise OutputPathError(
                    f"{option} {folder} is being written by another crossregion process (PID {holder}); "
                    "wait for it to finish (or stop it), or choose another folder"
                ) from None
            # The previous holder removes the file as it lets go: a lock taken on the removed file
            # guards nothing, so take it again on the file that is there now.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                    break
            os.close(descriptor)
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(descriptor)
            raise
    except OSError as error:
        raise WriteFailedError(f"cannot write {path}: {describe_write_failure(error)}") from error
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding the lock, so no other writer can be using it
        os.close(descriptor)
