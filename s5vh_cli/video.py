"""Video decoding: probe a file, choose which frames to keep, decode only those.

Sampling rules (docs/extract.md has the full table):
- ``uniform``: T frames at the centres of T equal segments of the frame range,
  ``index_i = floor((i + 0.5) * N / T)``. A video with fewer than T frames repeats frames in order.
- ``fps=F``: one frame every 1/F seconds starting at t=0, ``index_k = floor(k * src_fps / F)``, at most T of
  them (the first T); a shorter video is padded to T by repeating its last sampled frame.

Two decoders give the same frames, pixel for pixel:
- ``pyav`` (the default when PyAV is installed): packets are read without decoding; a group of pictures (from one
  keyframe to the next) that holds no wanted frame is never decoded, and inside the groups that are decoded,
  pictures no other picture refers to (``skip_frame=NONREF``) are skipped unless they are wanted. Frame ``i`` is
  the packet whose timestamp is ``i / fps`` (OpenCV's own rule for positions); the read is checked to be
  exactly that (one packet per frame index, none missing or repeated, every wanted frame decoded), and any
  file where it is not (variable frame rate, a stated length longer than the stream, damaged packets, a name
  FFmpeg cannot open) is read again by the OpenCV path below, which handles those cases.
- ``opencv``: frames are reached by grabbing (decode without colour conversion) across short gaps and by
  seeking across long ones; a seek is verified against the decoder's own frame position and replaced by
  grabbing when it lands elsewhere. When the container overstates its frame count, decoding stops early, the
  real count is taken from the decoder and the indices are chosen again from it.
Frame count and frame rate always come from OpenCV's reading of the container, so both decoders choose the
same indices. No torch here: this module runs in the decode worker processes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, VideoError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts",
    ".m2ts", ".ogv", ".vob", ".asf", ".divx", ".gif", ".y4m",
})
# Still images: FFmpeg opens them as one-frame "videos"; s5vh refuses them by content, and folders skip them.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
                              ".heic", ".heif", ".avif", ".jp2", ".ico", ".exr", ".dpx"})
# Quiet the decoder's own console messages about broken files: failures are reported once, by us.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
SEEK_GAP = 64  # frames: a longer gap between wanted frames is crossed by seeking, a shorter one by grabbing
DECODERS = ("auto", "pyav", "opencv")
DECODE_THREADS = 0  # PyAV decoder threads (0: FFmpeg's choice); decode worker processes set 1
GOP_BUFFER_BYTES = 64 << 20  # packets held back while deciding whether a group of pictures is needed


def check_decoder(name: str) -> str:
    """The decoder that ``name`` means here ("pyav" or "opencv"); raises InputError for an unknown name or a
    missing PyAV."""
    if name not in DECODERS:
        raise InputError(f"decoder must be one of {', '.join(DECODERS)}; got {name!r}")
    if name == "opencv":
        return name
    import importlib.util

    if importlib.util.find_spec("av") is None:
        if name == "pyav":
            raise InputError("decoder pyav needs PyAV: pip install av")
        return "opencv"
    return "pyav"


@dataclass(frozen=True)
class Sampling:
    """How frames are chosen; ``str()`` is the form stored in the artifact's ``sampling`` attribute."""

    mode: str  # "uniform" or "fps"
    rate: float = 0.0  # frames per second, for mode "fps"

    def __str__(self) -> str:
        return "uniform" if self.mode == "uniform" else f"fps={self.rate:g}"


def parse_sampling(text: str) -> Sampling:
    """Parse ``"uniform"`` or ``"fps=1.0"`` (the artifact's ``sampling`` attribute) back into a Sampling."""
    s = (text or "").strip().lower()
    if s == "uniform":
        return Sampling("uniform")
    m = re.fullmatch(r"fps\s*=\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)", s)
    if m:
        rate = float(m.group(1))
        if rate > 0 and math.isfinite(rate):
            return Sampling("fps", rate)
    raise InputError(f"sampling {text!r} is not understood; expected 'uniform' or 'fps=RATE' with RATE > 0")


@dataclass
class VideoInfo:
    path: str
    frame_count: int  # as the container states it (may be wrong; 0 when unknown)
    fps: float  # as the container states it (0 when unknown)
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


@dataclass
class Clip:
    """The frames kept from one video, already resized and cropped, RGB uint8 [T, S, S, 3]."""

    path: str
    frames: np.ndarray
    indices: np.ndarray  # [T] frame index of each kept frame (repeats where padded)
    times: np.ndarray  # [T] decoder timestamp of each kept frame, seconds
    frame_count: int  # frames really in the video when decoding reached the end, else the stated count
    fps: float
    duration: float
    valid: int  # how many of the T frames are distinct samples (the rest repeat for padding)
    notes: list[str] = field(default_factory=list)
    width: int = 0  # of the decoded stream, as the container states it
    height: int = 0
    file: dict[str, Any] = field(default_factory=dict)  # file records (size, mtime, sha256) when asked for
    views: np.ndarray | None = None  # [V, T, S, S, 3] transformed renderings (``extract --views``), else None


def _capture(cv2, path: str):
    """cv2.VideoCapture for any file name: OpenCV crashes the process on names that are not valid UTF-8
    (undecodable bytes arrive as surrogates), so those are opened through an ASCII-named symlink."""
    try:
        path.encode("utf-8")
        return cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    except UnicodeEncodeError:
        pass
    import tempfile

    with tempfile.TemporaryDirectory(prefix="s5vh-") as d:
        link = os.path.join(d, "video" + os.path.splitext(path.encode("ascii", "ignore").decode())[1])
        os.symlink(os.path.abspath(os.fsencode(path)), os.fsencode(link))
        return cv2.VideoCapture(link, cv2.CAP_FFMPEG)  # the file stays open after the link is gone


def still_image_kind(path: str) -> str | None:
    """The image format when the file's first bytes say it is a still image (PNG, JPEG, BMP, WebP, TIFF), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56,
                                                                                                  64, 108, 124):
        return "BMP"
    return None


def _open(path: str):
    import cv2

    if not os.path.exists(path):
        raise VideoError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a folder, not a video")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    image = still_image_kind(path)
    if image is not None:  # FFmpeg would open it as a one-frame video repeated T times
        raise VideoError(f"{path}: a still image ({image}), not a video; images are skipped (folders skip them too)")
    cap = _capture(cv2, path)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: not a video OpenCV can open (unknown container, corrupt header or not a video)")
    return cap


def probe(path: str) -> VideoInfo:
    """Container metadata. Raises VideoError when the file cannot be opened as a video."""

    cap = _open(path)
    try:
        return _info(cap, path)
    finally:
        cap.release()


def _info(cap, path: str) -> VideoInfo:
    import cv2

    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = cap.get(cv2.CAP_PROP_FPS)
    n = int(n) if math.isfinite(n) and n > 0 else 0
    fps = float(fps) if math.isfinite(fps) and 0 < fps < 10000 else 0.0
    return VideoInfo(path, n, fps, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))


def sample_indices(n_frames: int, frames: int, sampling: Sampling | str = "uniform",
                   fps: float = 0.0) -> tuple[np.ndarray, int]:
    """Frame indices to keep, always ``frames`` of them, and how many are distinct samples.

    ``uniform``: centres of ``frames`` equal segments (frames repeat in order when ``n_frames < frames``).
    ``fps=F``: ``floor(k * fps / F)`` for k = 0, 1, ... inside the video, the first ``frames`` of them, padded
    by repeating the last one. A video whose frame rate is unknown is treated as 25 frames/s.
    """
    if isinstance(sampling, str):
        sampling = parse_sampling(sampling)
    if n_frames < 1:
        raise VideoError("video has no frames")
    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    if sampling.mode == "uniform":
        idx = np.floor((np.arange(frames) + 0.5) * n_frames / frames).astype(np.int64)
        return np.minimum(idx, n_frames - 1), min(frames, n_frames)
    src = fps if fps > 0 else 25.0
    step = src / sampling.rate
    count = min(frames, max(1, math.ceil(n_frames / step - 1e-9)))
    idx = np.floor(np.arange(count) * step + 1e-9).astype(np.int64)
    idx = np.minimum(idx, n_frames - 1)
    if count < frames:
        idx = np.concatenate([idx, np.full(frames - count, idx[-1], dtype=np.int64)])
    return idx, count


def resize_crop(frame_bgr: np.ndarray, size: int, resize: int) -> np.ndarray:
    """Shorter side to ``resize`` (area filter when shrinking, bilinear when enlarging), centre crop
    ``size`` x ``size``, BGR to RGB. This is torchvision's ImageNet evaluation transform with OpenCV filters."""
    import cv2

    h, w = frame_bgr.shape[:2]
    scale = resize / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(frame_bgr, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img[top:top + size, left:left + size]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_frames(path: str, frames: int, sampling: Sampling | str = "uniform", *, size: int = 224,
                resize: int = 256, seek_gap: int = SEEK_GAP, decoder: str = "auto", views: int = 0,
                view_seed: int = 0, view_key: str = "") -> Clip:
    """Decode the sampled frames of one video, resized and cropped to ``size``. Raises VideoError.

    ``decoder``: "pyav", "opencv" or "auto" (PyAV when installed); both return the same frames.
    ``views`` > 0 also renders that many transformed versions (``s5vh_cli.views``, seeded by ``view_seed`` and
    ``view_key``) from the same decode, into ``Clip.views`` (decoded with OpenCV whatever ``decoder`` says).
    """
    import cv2

    if views > 0:
        return _read_with_views(path, frames, sampling, size=size, resize=resize, seek_gap=seek_gap, views=views,
                                view_seed=view_seed, view_key=view_key or path, decoder=decoder)
    if isinstance(sampling, str):
        sampling = parse_sampling(sampling)
    use_pyav = check_decoder(decoder) == "pyav"
    cap = _open(path)
    try:
        info = _info(cap, path)
        notes: list[str] = []
        n = info.frame_count
        if use_pyav and n > 0:
            idx, valid = sample_indices(n, frames, sampling, info.fps)
            got = _pyav_frames(path, idx, info.fps, size, resize)
            if got is not None:
                images, times = got
                return Clip(path=path, frames=images, indices=idx, times=times, frame_count=n, fps=info.fps,
                            duration=info.duration, valid=valid, notes=notes, width=info.width, height=info.height)
        if n <= 0:  # unknown length (some streams): count by grabbing, then sample
            n = _count_frames(cap)
            notes.append(f"frame count unknown in the container; counted {n} by decoding")
            cap.release()
            cap = _open(path)
        if n <= 0:
            raise VideoError(f"{path}: no decodable frames")
        for _attempt in range(2):
            idx, valid = sample_indices(n, frames, sampling, info.fps)
            try:
                got, real_n = _decode_indices(cap, idx, size, resize, seek_gap)
            except _SeekMissed:  # this file does not seek exactly: decode from the start, grabbing only
                notes.append("seeking is not frame-exact in this file; decoded from the start")
                seek_gap = 1 << 62
                cap.release()
                cap = _open(path)
                got, real_n = _decode_indices(cap, idx, size, resize, seek_gap)
            if got is not None:
                break
            # the container overstated its length: resample over the frames that really exist
            if real_n <= 0:
                raise VideoError(f"{path}: no decodable frames (the file is corrupt or truncated)")
            notes.append(f"container states {n} frames but only {real_n} decode; sampled from {real_n}")
            n = real_n
            cap.release()
            cap = _open(path)
        else:  # pragma: no cover - the second pass samples only frames that decoded in the first
            raise VideoError(f"{path}: frames stop decoding part-way (the file is corrupt or truncated)")
        images, times = got
        fps = info.fps
        return Clip(path=path, frames=images, indices=idx, times=times, frame_count=n, fps=fps,
                    duration=n / fps if fps > 0 else 0.0, valid=valid, notes=notes, width=info.width,
                    height=info.height)
    except cv2.error as e:
        raise VideoError(f"{path}: OpenCV failed to decode ({str(e).strip().splitlines()[-1][:120]})") from None
    finally:
        cap.release()


class _SeekMissed(Exception):
    pass


def _read_with_views(path: str, frames: int, sampling: Sampling | str, *, size: int, resize: int, seek_gap: int,
                     views: int, view_seed: int, view_key: str, decoder: str = "auto") -> Clip:
    """The plain clip (with ``decoder``), then each view's frames: decoded once (full size, OpenCV), edited,
    resized and cropped."""
    from .views import apply_spatial, draw_view, view_indices, view_rng

    # first pass: the plain sampling, exactly as without views (also settles the real frame count)
    plain = read_frames(path, frames, sampling, size=size, resize=resize, seek_gap=seek_gap, decoder=decoder)
    n = plain.frame_count
    specs = [draw_view(view_rng(view_seed, view_key, v)) for v in range(views)]
    wanted = [view_indices(plain.indices, n, s) for s in specs]
    cap = _open(path)
    try:
        raw, _ = _decode_indices(cap, np.unique(np.concatenate(wanted)), size, resize, seek_gap, keep_raw=True)
        if raw is None:  # pragma: no cover - the plain pass already found every index decodable
            raise VideoError(f"{path}: frames stop decoding part-way (the file is corrupt or truncated)")
    except _SeekMissed:
        cap.release()
        cap = _open(path)
        raw, _ = _decode_indices(cap, np.unique(np.concatenate(wanted)), size, resize, 1 << 62, keep_raw=True)
    finally:
        cap.release()
    by_index = dict(zip(np.unique(np.concatenate(wanted)).tolist(), raw[0], strict=True))
    out = np.empty((views, frames, size, size, 3), np.uint8)
    for v, (spec, idx) in enumerate(zip(specs, wanted, strict=True)):
        for t, i in enumerate(idx.tolist()):
            out[v, t] = resize_crop(apply_spatial(by_index[i], spec), size, resize)
    plain.views = out
    return plain


def _count_frames(cap) -> int:
    n = 0
    while cap.grab():
        n += 1
    return n


def _decode_indices(cap, idx: np.ndarray, size: int, resize: int, seek_gap: int, keep_raw: bool = False):
    """Return ((images, times), n) or (None, frames_seen) when the video ends before the last wanted index.

    A gap longer than ``seek_gap`` frames is crossed by a seek while seeking stays cheaper than grabbing
    through the gap would be: a seek decodes from the previous keyframe, so with long keyframe intervals
    (common in H.264) grabbing wins, and the measured costs decide per video.
    """
    import time

    import cv2

    wanted = sorted(set(int(i) for i in idx))
    kept: dict[int, tuple[np.ndarray, float]] = {}
    pos = 0  # index of the next frame grab() would return
    grab_s, grabs, seek_s = 0.0, 0, 0.0
    for target in wanted:
        gap = target - pos
        per_grab = grab_s / grabs if grabs else 0.0
        if gap > seek_gap and (not seek_s or not grabs or seek_s < gap * per_grab):
            t0 = time.perf_counter()
            if not _seek(cap, target):
                raise _SeekMissed
            seek_s = time.perf_counter() - t0
            pos = target
        t0 = time.perf_counter()
        n0 = pos
        while pos < target:
            if not cap.grab():
                return None, pos
            pos += 1
        if pos > n0:
            grab_s += time.perf_counter() - t0
            grabs += pos - n0
        ok, frame = cap.read()
        if not ok or frame is None:
            return None, pos
        t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        kept[target] = (frame if keep_raw else resize_crop(frame, size, resize), t)
        pos += 1
    if keep_raw:  # full-size frames differ in size between videos: a list, in ``idx`` order
        return ([kept[int(i)][0] for i in idx], np.array([kept[int(i)][1] for i in idx])), pos
    images = np.stack([kept[int(i)][0] for i in idx])
    times = np.array([kept[int(i)][1] for i in idx], dtype=np.float64)
    return (images, times), pos


def _seek(cap, target: int) -> bool:
    """Seek so that the next frame read is ``target``; verified with the decoder's own position."""
    import cv2

    if not cap.set(cv2.CAP_PROP_POS_FRAMES, target):
        return False
    return int(round(cap.get(cv2.CAP_PROP_POS_FRAMES))) == target


def thumbnails(path: str, count: int = 4, width: int = 160, quality: int = 70) -> list[bytes]:
    """JPEG keyframes spread over a video (at 10%...90% of its length), ``width`` pixels wide. Frames that fail
    to decode are left out; raises VideoError when the file cannot be opened at all."""
    import cv2

    cap = _open(path)
    try:
        n = _info(cap, path).frame_count
        out = []
        positions = [int(n * (0.1 + 0.8 * i / max(1, count - 1))) for i in range(count)] if n > 0 else [0]
        for pos in positions:
            if n > 0:
                cap.set(cv2.CAP_PROP_POS_FRAMES, pos)
            ok, frame = cap.read()
            if not ok or frame is None:
                continue
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                out.append(buf.tobytes())
        return out
    except cv2.error:
        return []
    finally:
        cap.release()
# ----------------------------------------------------------------------------------------------------------
# PyAV: decode only the groups of pictures that hold wanted frames, and in them only what is referenced
# ----------------------------------------------------------------------------------------------------------
class _NotExact(Exception):
    """This file does not follow the one-packet-per-frame-index grid: let the OpenCV path read it."""


def _pyav_frames(path: str, idx: np.ndarray, fps: float, size: int,
                 resize: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(images [T, size, size, 3] RGB, times [T]) of the frames ``idx``, or None when the file must be read
    by the OpenCV path instead (see the module docstring)."""
    import av

    if fps <= 0:
        return None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return None
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads
            stream.thread_count = DECODE_THREADS
            kept = _pyav_decode(container, stream, sorted(set(int(i) for i in idx)), fps, size, resize)
    except Exception:  # noqa: BLE001 - anything odd in this file: the OpenCV path reads it (or says why not)
        return None
    images = np.stack([kept[int(i)][0] for i in idx])
    times = np.array([kept[int(i)][1] for i in idx], dtype=np.float64)
    return images, times


def _pyav_decode(container, stream, wanted: list[int], fps: float, size: int,  # noqa: ANN001 - PyAV objects
                 resize: int) -> dict[int, tuple[np.ndarray, float]]:
    tb = float(stream.time_base)
    start = stream.start_time if stream.start_time is not None else 0
    want = set(wanted)
    last = wanted[-1]
    ctx = stream.codec_context
    kept: dict[int, tuple[np.ndarray, float]] = {}
    seen: set[int] = set()  # frame index of every packet read: must end up exactly 0..last

    def index(pts: int | None) -> int:
        if pts is None:
            raise _NotExact
        x = (pts - start) * tb * fps
        i = round(x)
        if abs(x - i) > 0.25:  # between two frame slots: not a constant-rate stream
            raise _NotExact
        return i

    def decode(gop: list) -> None:  # noqa: ANN001 - PyAV packets
        for pkt, i in gop:
            # a picture nothing refers to is skipped unless it is wanted; FFmpeg reads skip_frame per packet
            ctx.skip_frame = "DEFAULT" if i in want else "NONREF"
            for fr in ctx.decode(pkt):
                take(fr)

    def take(fr) -> None:  # noqa: ANN001
        i = index(fr.pts)
        if i in want and i not in kept:
            img = fr.to_ndarray(format="bgr24", interpolation="BICUBIC")  # OpenCV's conversion, same pixels
            kept[i] = (resize_crop(img, size, resize), (fr.pts - start) * tb)

    # groups of pictures: (packets, their indices); one is decided once the next one is read, because an
    # open group's leading pictures (shown before its keyframe) refer to the group before it
    pending: list[tuple[list, set[int], bool]] = []  # (packets with indices, indices, has leading pictures)
    cur: list = []
    cur_idx: set[int] = set()
    cur_key = -1
    leading = False
    held = 0

    def close_group(final: bool = False) -> None:
        nonlocal cur, cur_idx, leading, held
        if cur:
            pending.append((cur, cur_idx, leading))
        cur, cur_idx, leading = [], set(), False
        while len(pending) >= (1 if final else 2):
            g, gi, _ = pending.pop(0)
            nxt_leading, nxt_i = (pending[0][2], pending[0][1]) if pending else (False, set())
            if gi & want or (nxt_leading and nxt_i & want):
                decode(g)
        held = sum(sum(p.size for p, _ in g) for g, _, _ in pending)

    for pkt in container.demux(stream):
        if pkt.size == 0:  # the demuxer's end-of-stream marker
            continue
        i = index(pkt.pts)
        if i in seen:
            raise _NotExact
        seen.add(i)
        if pkt.is_keyframe:
            close_group()
            cur_key = i
        elif i < cur_key:
            leading = True
        cur.append((pkt, i))
        cur_idx.add(i)
        held += pkt.size
        if held > GOP_BUFFER_BYTES:  # one very long group: stop holding packets back, decode them
            for g, _, _ in pending:
                decode(g)
            decode(cur)
            pending.clear()
            cur, cur_idx, held = [], set(), 0
        if i > last + 64:  # far enough past the last wanted frame for any reordering
            break
    close_group(final=True)
    ctx.skip_frame = "DEFAULT"
    for fr in ctx.decode(None):  # frames still held by the decoder (reordering, threads)
        take(fr)
    if not seen or min(seen) != 0 or any(j not in seen for j in range(last + 1)):
        raise _NotExact
    if any(i not in kept for i in want):
        raise _NotExact
    return kept
