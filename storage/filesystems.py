"""Is a path on a network or FUSE filesystem? The SQLite index must not be.

SQLite's WAL mode needs memory shared between the processes of one host and working file
locks; over NFS, SMB, a FUSE mount (hf-mount, a Space's bucket volume, sshfs, rclone,
gcsfuse, mountpoint-s3 …) or a cluster filesystem the locks are unreliable and writes may be
flushed late or out of order, so an index there can be corrupted or lose commits.

The filesystem type comes from ``/proc/self/mountinfo`` (the mount holding the path: the
longest mount point above it), which names FUSE filesystems by their own ``fuse.<name>``;
where that file cannot be read (not Linux, a restricted /proc) ``statfs(2)``'s ``f_type``
magic number is asked through ctypes. ``os.statvfs`` is no help: it has no type field.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError

MOUNTINFO = "/proc/self/mountinfo"

NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "coda",
        "ocfs2",
        "gfs2",
        "beegfs",
        "orangefs",
        "davfs",
        "sshfs",
        "cvmfs",
        "pvfs2",
    }
)
"""Network and cluster filesystems by their mountinfo type. Every FUSE type (``fuse``,
``fuseblk``, ``fuse.*``) counts too, see :func:`is_network_type`."""

STATFS_MAGIC = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x73757245: "coda",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x7461636F: "ocfs2",
    0x01161970: "gfs2",
    0x19830326: "beegfs",
}
"""``statfs.f_type`` magic numbers of the same families (linux/magic.h and each project's own)."""


class NetworkFilesystemError(StoreError):
    """The index path is on a network or FUSE filesystem; the store refuses to open it."""


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where it is mounted, its filesystem type and source."""

    mount_point: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040`` …)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts listed in mountinfo text (proc(5): ``id parent major:minor root
    mount-point options [optional fields…] - type source super-options``)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue  # not a mountinfo line
        dash = fields.index("-", 6)
        if len(fields) < dash + 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[dash + 1], _unescape(fields[dash + 2])))
    return mounts


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute, symbolic links resolved as far as it exists (an index not made
    yet lands on the filesystem of the folder it will be made in)."""
    path = Path(os.path.abspath(os.fspath(path)))
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path.name)
        path = path.parent
    return path.resolve().joinpath(*reversed(missing))


def mount_of(path: str | os.PathLike, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path``: the last-mounted of those with the longest mount point above it."""
    target = _absolute(path).as_posix()
    best = None
    for mount in mounts:  # mountinfo lists mounts in mount order: a later one over the same point wins
        point = mount.mount_point.rstrip("/") or "/"
        above = target == point or target.startswith(point.rstrip("/") + "/")
        if above and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def is_network_type(fs_type: str) -> bool:
    """Whether a mountinfo filesystem type is a network, cluster or FUSE filesystem."""
    kind = fs_type.lower()
    return kind in NETWORK_TYPES or kind in ("fuse", "fuseblk") or kind.startswith("fuse.")


def statfs_type(path: str | os.PathLike) -> int | None:
    """``statfs(2)``'s ``f_type`` of ``path`` on Linux (its first field, a C long), else None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    existing = _absolute(path)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if libc.statfs(os.fsencode(str(existing)), buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def network_filesystem(path: str | os.PathLike, mountinfo: str | None = None) -> str | None:
    """A short description (``"nfs4 at /mnt/x"``) when ``path`` is on a network or FUSE
    filesystem, else None. ``mountinfo`` is mountinfo text to use instead of this process's
    (tests); without it, ``statfs`` answers where mountinfo cannot be read."""
    if mountinfo is None:
        try:
            mountinfo = Path(MOUNTINFO).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            mountinfo = None
    if mountinfo is not None:
        mount = mount_of(path, parse_mountinfo(mountinfo))
        if mount is not None:
            return f"{mount.fs_type} at {mount.mount_point}" if is_network_type(mount.fs_type) else None
    kind = STATFS_MAGIC.get(statfs_type(path) or 0)
    return f"{kind} (statfs)" if kind else None


def refuse_network_index(path: str | os.PathLike, mountinfo: str | None = None) -> None:
    """Raise :class:`NetworkFilesystemError` — one line that says what to do — when the
    index at ``path`` would be on a network or FUSE filesystem."""
    found = network_filesystem(path, mountinfo)
    if found is not None:
        raise NetworkFilesystemError(
            f"the index {os.fspath(path)} is on a network or FUSE filesystem ({found}), where SQLite's locks "
            "and writes are not safe: keep HOMER_HOME (the index, queue and leases) on a local disk and put "
            "documents and caches in an object-store URL (s3://bucket/prefix or hf://buckets/<owner>/<name>)"
        )
