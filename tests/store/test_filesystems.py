"""Network and FUSE filesystems are recognised (storage.filesystems), from mountinfo samples
and from a real FUSE mount (SeaweedFS's ``weed mount``, where this machine lets a test mount)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from seaweedfs_helpers import seaweedfs  # noqa: F401  (fixture)

from storage.filesystems import (
    STATFS_MAGIC,
    NetworkFilesystemError,
    is_network_type,
    mount_of,
    network_filesystem,
    parse_mountinfo,
    refuse_network_index,
    statfs_type,
)

SAMPLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 27 0:27 / /home rw,relatime shared:5 - xfs /dev/vdb1 rw
41 27 0:41 / /mnt/nfs rw,relatime shared:7 - nfs4 server:/export rw,vers=4.2
42 41 0:42 / /mnt/nfs/local-inside rw,relatime - ext4 /dev/vdc rw
43 27 0:43 / /mnt/smb rw,relatime - cifs //nas/share rw
44 27 0:44 / /data rw,nosuid,nodev,relatime shared:9 - fuse.hf-mount hf-mount rw,user_id=0,group_id=0
45 27 0:45 / /mnt/ssh rw,relatime - fuse.sshfs me@host:/ rw
46 27 0:46 / /mnt/my\\040books rw,relatime - 9p hostshare rw
47 27 0:47 / /mnt/ceph rw,relatime - ceph 10.0.0.1:/ rw
48 27 0:48 / /mnt/gluster rw,relatime - fuse.glusterfs g1:/vol rw
49 27 0:49 / /mnt/usb rw,relatime - fuseblk /dev/sdb1 rw
50 27 0:50 / /var/lib/docker/overlay rw,relatime - overlay overlay rw
51 27 0:51 / /mnt/later rw,relatime - ext4 /dev/vdd rw
52 27 0:52 / /mnt/later rw,relatime - nfs srv:/later rw
"""


@pytest.mark.parametrize(
    "path, found",
    [
        ("/home/me/.local/share/homer/store/index.db", None),
        ("/mnt/nfs/homer/index.db", "nfs4 at /mnt/nfs"),
        ("/mnt/nfs/local-inside/index.db", None),  # a local disk mounted inside the share
        ("/mnt/smb/index.db", "cifs at /mnt/smb"),
        ("/data/store/index.db", "fuse.hf-mount at /data"),  # a Space's bucket volume
        ("/mnt/ssh/index.db", "fuse.sshfs at /mnt/ssh"),
        ("/mnt/my books/index.db", "9p at /mnt/my books"),  # mountinfo escapes the space as \\040
        ("/mnt/ceph/x/index.db", "ceph at /mnt/ceph"),
        ("/mnt/gluster/index.db", "fuse.glusterfs at /mnt/gluster"),
        ("/mnt/usb/index.db", "fuseblk at /mnt/usb"),
        ("/var/lib/docker/overlay/index.db", None),
        ("/mnt/later/index.db", "nfs at /mnt/later"),  # mounted over an ext4 mount: the later one counts
        ("/mnt/nfsish/index.db", None),  # a name that only starts like a mount point
    ],
)
def test_the_filesystem_of_a_path_is_read_from_mountinfo(path, found):
    assert network_filesystem(path, mountinfo=SAMPLE) == found


def test_mountinfo_lines_parse():
    mounts = parse_mountinfo(SAMPLE + "garbage line\n")
    assert len(mounts) == 15
    assert mounts[3].mount_point == "/mnt/nfs" and mounts[3].fs_type == "nfs4" and mounts[3].source == "server:/export"
    assert mount_of("/mnt/my books/a", mounts).fs_type == "9p"


@pytest.mark.parametrize(
    "kind, network",
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("9p", True),
        ("ceph", True),
        ("glusterfs", True),
        ("fuse", True),
        ("fuseblk", True),
        ("fuse.rclone", True),
        ("fuse.mountpoint-s3", True),
        ("lustre", True),
        ("ext4", False),
        ("xfs", False),
        ("btrfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("zfs", False),
    ],
)
def test_network_types(kind, network):
    assert is_network_type(kind) is network


def test_the_refusal_is_one_line_that_says_what_to_do():
    with pytest.raises(NetworkFilesystemError) as caught:
        refuse_network_index("/data/store/index.db", mountinfo=SAMPLE)
    message = str(caught.value)
    assert "\n" not in message
    for words in (
        "/data/store/index.db",
        "fuse.hf-mount at /data",
        "local disk",
        "HOMER_HOME",
        "s3://",
        "hf://buckets/",
    ):
        assert words in message
    refuse_network_index("/home/me/index.db", mountinfo=SAMPLE)  # local: nothing raised


def test_an_index_not_made_yet_is_judged_by_its_nearest_folder(tmp_path):
    mountinfo = f"27 1 254:0 / / rw - ext4 /dev/vda rw\n60 27 0:60 / {tmp_path} rw - nfs4 s:/e rw\n"
    assert network_filesystem(tmp_path / "not" / "yet" / "index.db", mountinfo=mountinfo) == f"nfs4 at {tmp_path}"


def test_statfs_reads_the_filesystem_type_here(tmp_path):
    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("statfs(2) through ctypes is read on Linux only")
    assert isinstance(statfs_type(tmp_path), int)
    assert statfs_type("/proc") == 0x9FA0  # PROC_SUPER_MAGIC


def fuse_mount_possible() -> str | None:
    """Why a test cannot mount a FUSE filesystem here, or None when it can."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "not root and no fusermount to mount FUSE as a user"
    return None


@pytest.fixture
def fuse_mount(seaweedfs, tmp_path):
    """The session SeaweedFS's filer mounted with FUSE (``weed mount``) at a temp folder."""
    reason = fuse_mount_possible()
    if reason:
        pytest.skip(reason)
    point = tmp_path / "bucket-volume"
    point.mkdir()
    log = open(tmp_path / "mount.log", "wb")
    process = subprocess.Popen(
        [seaweedfs.binary, "mount", f"-filer={seaweedfs.filer}", f"-dir={point}", "-filer.path=/"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if str(point) in Path("/proc/self/mountinfo").read_text():
                break
            time.sleep(0.2)
        else:
            pytest.skip(f"weed mount could not mount FUSE here: {(tmp_path / 'mount.log').read_text()[-500:]}")
        yield point
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if str(point) in Path("/proc/self/mountinfo").read_text():
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def test_an_index_on_a_real_fuse_mount_is_refused(fuse_mount, tmp_path):
    (fuse_mount / "store").mkdir()
    (fuse_mount / "store" / "probe.txt").write_text("a real FUSE filesystem")
    index = fuse_mount / "store" / "index.db"
    found = network_filesystem(index)
    assert found == f"fuse.seaweedfs at {fuse_mount}"
    with pytest.raises(NetworkFilesystemError, match="local disk"):
        refuse_network_index(index)
    assert network_filesystem(tmp_path / "local" / "index.db") is None  # beside the mount: local
    assert STATFS_MAGIC.get(statfs_type(index)) == "fuse"  # without mountinfo, statfs says so too
    assert network_filesystem(index, mountinfo="") == "fuse (statfs)"
