"""Part 2 of issue 13: archives built to hurt (bombs, escapes, devices) are refused with a reason,
before or while they are written, and leave nothing behind; URLs are refused everywhere."""
import io
import os
import stat
import tarfile
import zipfile

import pytest
import requests

from lmjupyter.archive.manifest import ArchiveError
from lmjupyter.archive.unpack import UnpackLimits, unpack
from serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
SMALL = UnpackLimits(max_bytes=8 * MiB, max_members=50, max_ratio=20, ratio_floor=2 * MiB)


def zeros_zip(path, size, name="weights.bin"):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open(name, "w", force_zip64=True) as member:
            for _ in range(size // MiB):
                member.write(bytes(MiB))
    return str(path)


def zeros_tgz(path, size, name="weights.bin"):
    class Zeros(io.RawIOBase):
        left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros()))
    return str(path)


def refused(path, tmp_path, limits=SMALL) -> str:
    root = tmp_path / "unpacked"
    with pytest.raises(ArchiveError) as info:
        unpack(str(path), str(root), limits)
    assert not root.exists() or os.listdir(root) == [], "a refused archive left files behind"
    return str(info.value)


def test_zip_and_tar_bombs_stop_at_the_size_limit(tmp_path):
    for bomb in (zeros_zip(tmp_path / "bomb.zip", 64 * MiB), zeros_tgz(tmp_path / "bomb.tar.gz", 64 * MiB)):
        assert os.path.getsize(bomb) < MiB  # 64 MiB of zeros packs into a few hundred KiB
        message = refused(bomb, tmp_path, UnpackLimits(max_bytes=8 * MiB))
        assert "unpacks to more than 8 MiB" in message and "--archive-max-size" in message


def test_a_bomb_under_the_size_limit_is_stopped_by_its_expansion(tmp_path):
    bomb = zeros_tgz(tmp_path / "bomb.tgz", 24 * MiB)
    message = refused(bomb, tmp_path, UnpackLimits(max_ratio=20, ratio_floor=2 * MiB))
    assert "expands to more than 20 times its size" in message


def test_too_many_members_and_a_full_disk_are_refused(tmp_path):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(51):
            z.writestr(f"f{i}.txt", "x")
    assert "more than 50 members" in refused(many, tmp_path)
    many_tar = tmp_path / "many.tar"
    with tarfile.open(many_tar, "w") as tar:
        for i in range(51):
            info = tarfile.TarInfo(f"f{i}.txt")
            tar.addfile(info, io.BytesIO(b""))
    assert "--archive-max-files" in refused(many_tar, tmp_path)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    small = zeros_zip(tmp_path / "small.zip", 2 * MiB)
    assert "keeping" in refused(small, tmp_path, UnpackLimits(disk_reserve=free))


def test_device_files_pipes_and_links_out_are_refused(tmp_path):
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        evil = tmp_path / f"dev{kind!r}.tar"
        with tarfile.open(evil, "w") as tar:
            info = tarfile.TarInfo("null")
            info.type, info.devmajor, info.devminor = kind, 1, 3
            tar.addfile(info)
        assert "unsafe" in refused(evil, tmp_path)
    for mode in (stat.S_IFCHR | 0o666, stat.S_IFIFO | 0o644, stat.S_IFSOCK | 0o644):
        evil = tmp_path / "dev.zip"
        with zipfile.ZipFile(evil, "w") as z:
            info = zipfile.ZipInfo("null")
            info.external_attr = mode << 16
            z.writestr(info, b"")
        assert "device, pipe or socket" in refused(evil, tmp_path)
    # a link that stays inside, then a member written through a link that leaves
    evil = tmp_path / "through.tar"
    with tarfile.open(evil, "w") as tar:
        inside = tarfile.TarInfo("here")
        inside.type, inside.linkname = tarfile.SYMTYPE, "."
        tar.addfile(inside)
        out = tarfile.TarInfo("up")
        out.type, out.linkname = tarfile.SYMTYPE, "here/.."
        tar.addfile(out)
        info = tarfile.TarInfo("up/escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    refused(evil, tmp_path)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("limited")
    server = ServerProcess(str(root), "--model-store", str(root / "store"), "--archive-max-size", "8M",
                           "--archive-max-files", "50")
    yield server, root
    server.stop()


def test_the_server_refuses_a_bomb_with_400_and_keeps_serving(limited):
    server, root = limited
    bomb = zeros_zip(root / "bomb.zip", 32 * MiB)
    response = requests.post(server.url + "lmserve/api/models", json={"name": "bomb", "archive": bomb, "wait": True},
                             headers={"Authorization": f"token {server.token}"}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["key"] == "archive" and "8 MiB" in error["message"]
    assert server.client.list() == [] and server.client.health()["status"] == "ok"
    unpacked = root / "store" / ".lmjupyter" / "unpacked"
    assert not unpacked.exists() or os.listdir(unpacked) == []


@pytest.mark.parametrize("key", ["archive", "model_dir", "config_file", "handler"])
@pytest.mark.parametrize("url", ["http://example.invalid/m.mar", "https://example.invalid/m.tar.gz",
                                 "file:///etc/passwd", "s3://bucket/m.zip"])
def test_urls_are_refused_for_every_path_key(limited, key, url):
    server, _ = limited
    body = {"name": "remote", "handler": "lmjupyter.handlers.base:BaseHandler", key: url}
    response = requests.post(server.url + "lmserve/api/models", json=body,
                             headers={"Authorization": f"token {server.token}"}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["key"] == key and "URL" in response.json()["error"]["message"]
