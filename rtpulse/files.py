"""Writing result files safely: atomically (temp file + rename), never over an input, one-line errors."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from rtpulse.errors import RtpulseError


def _check_parent(path: Path) -> None:
    """The nearest existing folder above ``path`` must be a folder, not a file (else nothing can be made there)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RtpulseError(f"cannot write {path}: {parent} is a file, not a folder")
            return


def check_output_file(path: str | os.PathLike, inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """``path`` as a Path, or a one-line error if it is a directory or is the same file as one of ``inputs``."""
    path = Path(path)
    if path.is_dir():
        raise RtpulseError(f"output {path} is a directory; give a file name")
    if path.exists() and not path.is_file():  # renaming over a FIFO or a device would replace it, not feed it
        raise RtpulseError(f"output {path} is not a regular file (a pipe or a device); give a file name")
    _check_parent(path)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        # resolve() even when path does not exist yet: "sub/../in.wav" names the input once sub/ is created
        if path.resolve() == src.resolve() or (path.exists() and src.exists() and os.path.samefile(path, src)):
            raise RtpulseError(f"output {path} is the same file as {src}; choose another output path")
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a one-line error if it exists and is not a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RtpulseError(f"output folder {path} is a file; give a folder")
    _check_parent(path)
    return path


def probe_writable_dir(path: str | os.PathLike) -> None:
    """Before a long run: make the folder (and its parents), write and delete a file in it, and remove the folders
    this made. What cannot be made or written there (/proc, a read-only disk) is a one-line error now, not at the end."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temp_beside(path / "probe")
        with open(probe, "x"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise RtpulseError(f"cannot write into {path}: {e.strerror or e}") from None
    finally:
        for p in made:  # deepest first
            try:
                p.rmdir()
            except OSError:
                pass


def check_json_output(path: str | os.PathLike, what: str) -> Path:
    """A JSON result file: named *.json (no audio input or model file is), not a folder, in a folder that can exist."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise RtpulseError(f"{what} {path}: give a file name ending in .json")
    return check_output_file(path)


def libsndfile_path(path: str | os.PathLike) -> str | bytes:
    """``path`` for soundfile: the str while it is UTF-8, else its bytes. soundfile encodes a str as UTF-8, so a
    name that is not (Latin-1 bytes on a UTF-8 system, held as surrogates) fails there, though libsndfile opens it."""
    text = os.fspath(path)
    try:
        text.encode()
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def temp_beside(path: Path, suffix: str = "") -> Path:
    """A hidden temp name in ``path``'s folder (so the final rename stays on one file system). A legal 255-byte output
    name must not give an illegal temp name: a long name keeps its first 180 bytes plus a hash of the whole, so two
    outputs written at once (live's two recordings) never share a temp file."""
    raw = os.fsencode(path.name)  # the file system's bytes: also names that are not valid UTF-8
    if len(raw) > 200:
        raw = raw[:180] + b"~" + hashlib.sha1(raw).hexdigest()[:12].encode()
    return path.with_name(f".{os.fsdecode(raw)}.tmp-{os.getpid()}{suffix}")


def discard(tmp: Path) -> None:
    """Remove a temp file if it is there; never raises (the error that matters is the one being handled)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def os_write_error(path: Path) -> str | None:
    """Why the system refuses to write ``path`` (a read-only folder, a full disk, a file-size limit), found by
    appending to it, or None if it now takes data: a failed libsndfile call says only "System error." (soundfile
    reports libsndfile's generic text, not the errno's)."""
    try:
        with open(path, "ab") as f:
            f.write(bytes(1 << 16))
    except OSError as e:
        return e.strerror or str(e)
    return None


def write_synced(tmp: Path, data: bytes) -> None:
    """Write ``data`` to ``tmp`` and flush it to the disk: renamed over a file afterwards, a power cut cannot leave an
    empty file where the old one was (some file systems commit the rename before the data)."""
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        try:
            os.fsync(f.fileno())
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system without fsync: the rename still holds
                raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a hidden temp file beside ``path`` and rename it over ``path``: a crash never leaves a
    partial file. The folder is created if missing; any OS problem is one :class:`RtpulseError` line."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synced(tmp, text.encode())
        os.replace(tmp, path)
    except OSError as e:
        raise RtpulseError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        discard(tmp)
