"""session.state_file: the memory store's sessions, saved on a graceful shutdown and restored at start.

The file holds every live session (id, created, last seen, idle timeout, requests, replica) and every
tombstone (id, reason, successor, forget_at), times in wall-clock seconds. It holds session ids in full:
mode 0600. Written to `<file>.tmp-<pid>` in the same directory, fsynced, renamed over the file, and the
directory fsynced, so a crash leaves the old file or the new one, never half of one. Read once at start and
removed, so a start after a crash (SIGKILL, OOM kill: nothing is saved) is cold and never replays an
older shutdown. A file this gateway cannot read is renamed `<file>.corrupt-<UTC time>` and the gateway
starts empty; nothing about the file ever stops it from serving.

Format, little-endian: `MAGIC`, a u32 format version, then (version 1) a u64 body length and the body's
CRC-32, and the body: a header (`_BODY`) and columns, strings joined by NUL (session ids are cookie octets,
and replica names tokens, so neither holds one; the reader checks the counts):

    session ids | replica names | created f64[n] | last_seen f64[n] | idle_timeout f64[n] | requests i64[n]
    | replica index u32[n] | tombstone ids | successors ("" for none) | reason names | reason index u8[m]
    | forget_at f64[m]

Why columns of stdlib `array`s and not JSON or msgpack: at 1M sessions (bench/state_file.py) they save in
~1.1 s and load, restore included, in ~2.2 s, where JSON of the same data took 3.3-4.4x as long to write and
is 30% larger; msgpack, a dependency, was no faster than the columns in a one-off comparison (0.9 s to pack
and write, 1.9 s to read). The save shares Kubernetes' grace period (30 s by default) with the drain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Final, TypeAlias, cast, get_args

from gateway.config import SessionConfig
from gateway.sessions.store import Ended, TombReason
from gateway.sessions.store.memory import (
    CREATED,
    IDLE,
    LAST_SEEN,
    REPLICA,
    REQUESTS,
    MemoryStore,
    Record,
    Snapshot,
    Tomb,
)

log = logging.getLogger("gateway")

MAGIC: Final = b"SGSTATE\x00"
VERSION: Final = 1
_PREFIX: Final = struct.Struct("<8sI")  # magic, format version
_CHECK: Final = struct.Struct("<QI")  # body length, CRC-32 of the body
# saved_at; sessions, tombstones, replica names, reason names; the byte lengths of the five string blobs
_BODY: Final = struct.Struct("<dQQII5Q")
_TOMB_REASONS: Final[frozenset[str]] = frozenset(get_args(TombReason))
_SEP: Final = "\x00"
Chunk: TypeAlias = "bytes | array[Any]"  # array is generic only to type checkers before 3.12


class StateFileError(Exception):
    """Not a state file this gateway reads: foreign, from a newer version, truncated or corrupt."""


def size_bound(config: SessionConfig) -> int:
    """Bytes a state file may have: twice what max_sessions and max_tombstones fill at max_id_length.

    A larger file was not written under this configuration: it is set aside unread, so a stray file never
    makes the start-up read more than a small multiple of what the store itself may hold."""
    per_session = config.max_id_length + 1 + 36  # the id and its separator, four 8-byte columns, a u32
    per_tomb = 2 * (config.max_id_length + 1) + 9
    return 2 * (config.max_sessions * per_session + config.max_tombstones * per_tomb) + (1 << 20)


# -- encoding ----------------------------------------------------------------------------------------------


def _little(column: array[Any]) -> array[Any]:
    if sys.byteorder == "big":
        column.byteswap()
    return column


def _table(values: Sequence[str], code: str) -> tuple[list[str], array[int]]:
    """The distinct values, and each value's index among them."""
    names = list(dict.fromkeys(values))
    position = {name: i for i, name in enumerate(names)}
    return names, _little(array(code, map(position.__getitem__, values)))


def _column(code: str, field: int, records: Iterable[Record]) -> array[Any]:
    return _little(array(code, map(itemgetter(field), records)))


def encode(snapshot: Snapshot, saved_at: float) -> list[Chunk]:
    """The file's bytes as chunks, written without joining them (a million sessions make ~70 MB)."""
    sessions, tombs = snapshot.sessions, snapshot.tombstones
    records, tomb_values = sessions.values(), tombs.values()
    replica_names, replica_index = _table(list(map(itemgetter(REPLICA), records)), "I")
    reason_names, reason_index = _table([reason for reason, _, _ in tomb_values], "B")
    successors = [successor or "" for _, successor, _ in tomb_values]
    blobs = [
        _SEP.join(strings).encode() for strings in (sessions, replica_names, tombs, successors, reason_names)
    ]
    ids, replica_blob, tomb_ids, successor_ids, reason_blob = blobs
    head = _BODY.pack(
        saved_at, len(sessions), len(tombs), len(replica_names), len(reason_names), *map(len, blobs)
    )
    body: list[Chunk] = [
        head,
        ids,
        replica_blob,
        _column("d", CREATED, records),
        _column("d", LAST_SEEN, records),
        _column("d", IDLE, records),
        _column("q", REQUESTS, records),
        replica_index,
        tomb_ids,
        successor_ids,
        reason_blob,
        reason_index,
        _little(array("d", [forget_at for _, _, forget_at in tomb_values])),
    ]
    crc, length = 0, 0
    for chunk in body:
        crc = zlib.crc32(chunk, crc)
        length += memoryview(chunk).nbytes
    return [_PREFIX.pack(MAGIC, VERSION) + _CHECK.pack(length, crc), *body]


# -- decoding ----------------------------------------------------------------------------------------------


class _Reader:
    """Reads a body front to back; running out of bytes is corruption."""

    def __init__(self, body: memoryview) -> None:
        self.body, self.at = body, 0

    def take(self, size: int) -> memoryview:
        if self.at + size > len(self.body):
            raise StateFileError("corrupt: a column runs past the end")
        self.at += size
        return self.body[self.at - size : self.at]

    def strings(self, size: int, count: int) -> list[str]:
        blob = self.take(size)
        values = str(blob, "utf-8").split(_SEP) if count else []
        if len(values) != count:
            raise StateFileError(f"corrupt: {len(values)} strings where {count} were counted")
        return values

    def column(self, code: str, count: int) -> array[Any]:
        column = array(code)
        column.frombytes(self.take(column.itemsize * count))
        return _little(column)


def decode(data: bytes) -> tuple[Snapshot, float]:
    """The snapshot a file holds and when it was saved; StateFileError when it is not one we read."""
    if len(data) < _PREFIX.size or not data.startswith(MAGIC):
        raise StateFileError("not a session-gateway state file")
    _, version = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise StateFileError(f"format version {version}; this gateway reads version {VERSION}")
    if len(data) < _PREFIX.size + _CHECK.size:
        raise StateFileError("truncated")
    length, crc = _CHECK.unpack_from(data, _PREFIX.size)
    body = memoryview(data)[_PREFIX.size + _CHECK.size :]
    if len(body) != length:
        raise StateFileError(f"truncated: {len(body)} of {length} bytes" if len(body) < length else "corrupt")
    if zlib.crc32(body) != crc:
        raise StateFileError("corrupt: checksum mismatch")
    try:
        return _decode_body(body)
    except (ValueError, IndexError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise StateFileError(f"corrupt: {exc}") from None


def _decode_body(body: memoryview) -> tuple[Snapshot, float]:
    saved_at, n, m, n_replicas, n_reasons, *sizes = _BODY.unpack_from(body)
    ids_size, replicas_size, tomb_ids_size, successors_size, reasons_size = sizes
    read = _Reader(body[_BODY.size :])
    ids = read.strings(ids_size, n)
    replica_names = read.strings(replicas_size, n_replicas)
    created, last_seen, idle = read.column("d", n), read.column("d", n), read.column("d", n)
    requests = read.column("q", n)
    replicas = [replica_names[i] for i in read.column("I", n)]
    tomb_ids = read.strings(tomb_ids_size, m)
    successors = read.strings(successors_size, m)
    # A reason this version does not know (a newer one wrote it): the tombstone still leads to its successor.
    reason_names: list[TombReason] = [
        cast(TombReason, r) if r in _TOMB_REASONS else "unknown"
        for r in read.strings(reasons_size, n_reasons)
    ]
    reasons = [reason_names[i] for i in read.column("B", m)]
    forget_at = read.column("d", m)
    due = [0.0] * n  # restore() computes it
    records = zip(created, last_seen, idle, requests, replicas, due, strict=True)
    sessions: dict[str, Record] = dict(zip(ids, records, strict=True))
    tombs: dict[str, Tomb] = dict(
        zip(tomb_ids, zip(reasons, [s or None for s in successors], forget_at, strict=True), strict=True)
    )
    if read.at != len(read.body) or len(sessions) != n or len(tombs) != m:
        raise StateFileError("corrupt: inconsistent lengths or repeated ids")
    return Snapshot(sessions, tombs), saved_at


# -- the file ----------------------------------------------------------------------------------------------


def write(path: str, chunks: Iterable[Chunk]) -> int:
    """Replace the file atomically (temporary file, fsync, rename, directory fsync); the bytes written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a killed process that had our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    size = 0
    try:
        with open(fd, "wb") as fh:
            for chunk in chunks:
                size += fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path)
    return size


def _fsync_directory(path: str) -> None:
    """Make a rename in the file's directory durable (POSIX: the directory entry is the directory's data)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _probe(path: str) -> None:
    """Raise OSError unless a file can be created next to `path` (the directory exists and is writable)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    os.unlink(tmp)


def set_aside(path: str) -> str:
    """Rename an unreadable file out of the way, keeping it for a post-mortem; its new name."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    os.replace(path, aside)
    return aside


# -- start and shutdown ------------------------------------------------------------------------------------


async def load(store: MemoryStore, path: str, now: float, max_bytes: int) -> list[Ended]:
    """Restore the sessions a graceful shutdown saved into the empty `store`, and remove the file; the
    sessions that ended meanwhile (for the metrics). Whatever goes wrong, the store starts empty."""
    started = time.perf_counter()
    try:
        _probe(path)
    except OSError as exc:
        log.error(
            "session.state_file %s cannot be written (%s): sessions will not survive a restart",
            path,
            _why(exc),
        )
        return []
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read() if size <= max_bytes else b""
    except FileNotFoundError:
        log.info("session.state_file %s does not exist: starting empty", path)
        return []
    except OSError as exc:
        log.error("session.state_file %s cannot be read (%s): starting empty", path, _why(exc))
        return []
    try:
        if size > max_bytes:
            raise StateFileError(f"{size} bytes, more than this configuration's {max_bytes}")
        snapshot, saved_at = decode(data)
    except StateFileError as problem:
        del data
        try:
            aside = set_aside(path)
        except OSError as exc:
            aside = f"nowhere ({_why(exc)})"
        log.warning(
            "session.state_file %s is unreadable (%s): set aside as %s; starting empty", path, problem, aside
        )
        return []
    del data
    try:  # read once: a start after a crash must not replay this shutdown's sessions
        os.unlink(path)
        _fsync_directory(path)
    except OSError as exc:
        log.error(
            "session.state_file %s cannot be removed (%s): not restored; starting empty", path, _why(exc)
        )
        return []
    sessions = len(snapshot.sessions)
    tombs = sum(1 for _, _, forget_at in snapshot.tombstones.values() if forget_at > now)  # not forgotten
    ended = await store.restore(snapshot, now)
    evicted = sum(1 for e in ended if e.reason == "evicted")
    log.info(
        "restored %d sessions and %d tombstones from %s, saved %.1f s before (%d expired while down%s) in %.3f s",
        sessions - len(ended),
        tombs,
        path,
        now - saved_at,
        len(ended) - evicted,
        f", {evicted} evicted over session.max_sessions" if evicted else "",
        time.perf_counter() - started,
    )
    return ended


def save(store: MemoryStore, path: str, now: float) -> None:
    """Write the store's sessions and tombstones to the file; a failure is one line, never an exception."""
    started = time.perf_counter()
    snapshot = store.snapshot()
    try:
        size = write(path, encode(snapshot, now))
    except OSError as exc:
        log.error(
            "could not save %d sessions to session.state_file %s (%s): they end with this process",
            len(snapshot.sessions),
            path,
            _why(exc),
        )
        return
    except Exception:  # a bug of ours must not stop the shutdown either: one line, with its traceback
        log.exception("could not save %d sessions to session.state_file %s", len(snapshot.sessions), path)
        return
    log.info(
        "saved %d sessions and %d tombstones to %s (%d bytes) in %.3f s",
        len(snapshot.sessions),
        len(snapshot.tombstones),
        path,
        size,
        time.perf_counter() - started,
    )


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
