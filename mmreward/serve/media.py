"""Request media -> `SideMedia`, opening no file outside the server's media root.

A path is resolved against the root (symbolic links and ".." followed) and refused unless the result
lies inside it. The file is then opened one path component at a time with `O_NOFOLLOW`, starting from
the root's own descriptor, so a component swapped for a link between the check and the open fails
instead of leading out; only regular files are opened (no FIFOs or devices). The decoders read the
opened descriptor through `/proc/self/fd/N`, never the path again. Uploaded bytes go to an unnamed
temporary file read the same way. Every failure is an `ItemFailure` naming the item's field and the
path as the client wrote it.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from mmreward.data.dataset import SideMedia
from mmreward.data.media import MediaConfig, MediaError, SizeRule
from mmreward.data.records import check_path_length
from mmreward.serve.schema import RewardItem, Upload

# Where an open descriptor can be read as a path (Linux; /dev/fd elsewhere).
FD_DIR = Path("/proc/self/fd") if Path("/proc/self/fd").is_dir() else Path("/dev/fd")


class ItemFailure(Exception):
    """An item's media that cannot be used; `field` names the item's field."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def open_in_root(root: Path, relative: Path) -> int:
    """A read-only descriptor of the regular file `root / relative`, opened without following any
    symbolic link (`relative` must already be free of links and ".."; see the module docstring)."""
    if not relative.parts or ".." in relative.parts:
        raise ValueError(f"{relative}: not a file path inside the root")
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in relative.parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        fd = os.open(relative.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{relative}: not a regular file")
    return fd


class MediaReader:
    """Decodes a request item's media the way the model's own settings say (as `RewardModel.reward` does).

    root: the media root (None: paths are refused, only uploads are read).
    media: the checkpoint's `MediaConfig`. final_image_size: the processor's image size rule.
    """

    def __init__(self, root: str | Path | None, media: MediaConfig, final_image_size: SizeRule | None):
        self.root = Path(root).resolve(strict=True) if root is not None else None
        self.media = media
        self.final_image_size = final_image_size

    def side(self, item: RewardItem) -> SideMedia:
        """The item's prompt side: its images ("image" first), video and response."""
        refs: list[tuple[str, Any]] = [("image", item.image)] if item.image is not None else []
        refs += [(f"images[{k}]", ref) for k, ref in enumerate(item.images or [])]
        images = [self._decode(ref, field, "image") for field, ref in refs]
        video = self._decode(item.video, "video", "video") if item.video is not None else None
        return SideMedia(images=images, video=video, response=item.response)

    def _decode(self, ref: str | Upload, field: str, kind: str) -> Any:
        fd, name = self._open_upload(ref, field) if isinstance(ref, Upload) else self._open_path(ref, field)
        try:
            path = FD_DIR / str(fd)
            return self.media.image(path, self.final_image_size) if kind == "image" else self.media.video(path)
        except MediaError as err:
            raise ItemFailure(field, f"{name}: {err.reason}") from err
        finally:
            os.close(fd)

    def _open_path(self, ref: str, field: str) -> tuple[int, str]:
        if self.root is None:
            raise ItemFailure(field, f"{ref}: this server has no media root, so it takes no paths; "
                                     'send the file as {"base64": ...}')
        try:
            check_path_length(ref, "path")
            if "\x00" in ref:
                raise ValueError("path contains a NUL character")
        except ValueError as err:
            raise ItemFailure(field, str(err)) from err
        resolved = (self.root / ref).resolve()  # an absolute ref stays itself; links and ".." are followed
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise ItemFailure(field, f"{ref}: outside the media root (paths must resolve to a file inside it)")
        try:
            return open_in_root(self.root, resolved.relative_to(self.root)), ref
        except FileNotFoundError as err:
            raise ItemFailure(field, f"{ref}: file not found") from err
        except (IsADirectoryError, NotADirectoryError) as err:
            raise ItemFailure(field, f"{ref}: not a regular file") from err
        except OSError as err:  # ELOOP: a link appeared after the check; EACCES; ...
            raise ItemFailure(field, f"{ref}: cannot be opened inside the media root ({err.strerror})") from err

    @staticmethod
    def _open_upload(ref: Upload, field: str) -> tuple[int, str]:
        try:
            data = base64.b64decode(ref.base64, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ItemFailure(field, f"base64: not valid base64 ({err})") from err
        if not data:
            raise ItemFailure(field, "uploaded file is empty (0 bytes)")
        with tempfile.TemporaryFile() as file:  # unnamed where the OS allows; gone once closed
            file.write(data)
            file.flush()
            fd = os.dup(file.fileno())
        os.lseek(fd, 0, os.SEEK_SET)
        return fd, f"uploaded {field} ({len(data)} bytes)"
