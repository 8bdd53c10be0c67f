"""Frame sampling: the frames decoded are exactly the ones the rules choose."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from s5vh_cli import video
from s5vh_cli.errors import InputError, VideoError

SIDE = 64  # 4 x 4 blocks of 16 x 16 pixels: 16 bits of frame index, robust to mp4v compression


def index_frame(i: int) -> np.ndarray:
    bits = [(i >> b) & 1 for b in range(16)]
    img = np.zeros((SIDE, SIDE, 3), np.uint8)
    for b, on in enumerate(bits):
        r, c = divmod(b, 4)
        img[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = 230 if on else 25
    return img


def read_index(img: np.ndarray) -> int:
    g = img.astype(np.float32).mean(axis=2)
    value = 0
    for b in range(16):
        r, c = divmod(b, 4)
        if g[r * 16 + 4:(r + 1) * 16 - 4, c * 16 + 4:(c + 1) * 16 - 4].mean() > 128:
            value |= 1 << b
    return value


def make_index_video(path, n: int, fps: float = 25.0, fourcc: str = "mp4v") -> str:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (SIDE, SIDE))
    assert w.isOpened()
    for i in range(n):
        w.write(index_frame(i))
    w.release()
    return str(path)


def make_h264_video(path, n: int, fps: int = 25, gop: int = 30, bframes: int = 3, pts_jitter: bool = False) -> str:
    """H.264 with B-frames and a keyframe every ``gop`` frames (PyAV's own libx264), frames carrying their index.
    ``pts_jitter``: timestamps off the frame grid, as in a variable-frame-rate file."""
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width = st.height = SIDE
        st.pix_fmt = "yuv420p"
        st.options = {"g": str(gop), "bf": str(bframes), "crf": "8", "sc_threshold": "0"}
        if pts_jitter:
            from fractions import Fraction

            st.codec_context.time_base = Fraction(1, fps * 10)
        for i in range(n):
            fr = av.VideoFrame.from_ndarray(index_frame(i)[:, :, ::-1].copy(), format="rgb24")
            if pts_jitter:
                fr.pts = i * 10 + (3 if i % 2 else 0)
                fr.time_base = st.codec_context.time_base
            for pkt in st.encode(fr):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    return str(path)


def decoded_indices(clip) -> list[int]:
    return [read_index(f) for f in clip.frames]


def read(path, frames, sampling="uniform", **kw):
    return video.read_frames(str(path), frames, sampling, size=SIDE, resize=SIDE, **kw)


@pytest.fixture(params=["opencv", "pyav"])
def decoder(request):
    """Every decoder kept must choose and return exactly the same frames."""
    return request.param


def test_pattern_round_trip():
    for i in (0, 1, 77, 255, 1000, 65535):
        assert read_index(index_frame(i)) == i


def test_uniform_indices_rule():
    idx, valid = video.sample_indices(100, 4)
    assert idx.tolist() == [12, 37, 62, 87] and valid == 4
    idx, valid = video.sample_indices(3, 6)  # shorter than T: repeat in order
    assert idx.tolist() == [0, 0, 1, 1, 2, 2] and valid == 3
    idx, valid = video.sample_indices(25, 25)
    assert idx.tolist() == list(range(25))


def test_fps_indices_rule():
    idx, valid = video.sample_indices(100, 5, "fps=1", fps=25.0)  # 4 s video, cap 5: 4 samples + 1 pad
    assert idx.tolist() == [0, 25, 50, 75, 75] and valid == 4
    idx, valid = video.sample_indices(1000, 3, "fps=2", fps=10.0)  # cap: first 3 samples
    assert idx.tolist() == [0, 5, 10] and valid == 3


def test_parse_sampling_round_trip():
    for s in ("uniform", "fps=1", "fps=0.5", "fps=2.5"):
        assert str(video.parse_sampling(s)) == s
    for bad in ("fps=0", "fps=-1", "every", "fps=x"):
        with pytest.raises(InputError):
            video.parse_sampling(bad)


@pytest.mark.parametrize("seek_gap", [0, 1 << 30], ids=["seek", "grab"])
def test_uniform_frames_are_exact(tmp_path, seek_gap, decoder):
    path = make_index_video(tmp_path / "v.mp4", 240)
    clip = read(path, 7, seek_gap=seek_gap, decoder=decoder)
    want = video.sample_indices(240, 7)[0].tolist()
    assert clip.indices.tolist() == want
    assert decoded_indices(clip) == want
    assert clip.frame_count == 240 and clip.valid == 7
    assert np.allclose(clip.times, np.array(want) / 25.0, atol=1e-3)


def test_avi_seek_exact(tmp_path, decoder):
    path = make_index_video(tmp_path / "v.avi", 300, fourcc="MJPG")
    clip = read(path, 5, seek_gap=8, decoder=decoder)
    assert decoded_indices(clip) == video.sample_indices(300, 5)[0].tolist()


def test_fps_frames_are_exact(tmp_path, decoder):
    path = make_index_video(tmp_path / "v.mp4", 100, fps=20.0)  # 5 s
    clip = read(path, 8, "fps=2", decoder=decoder)
    assert decoded_indices(clip) == [0, 10, 20, 30, 40, 50, 60, 70]
    clip = read(path, 12, "fps=2", decoder=decoder)  # 10 samples then 2 repeats of the last
    assert decoded_indices(clip) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 90, 90]
    assert clip.valid == 10


def test_shorter_than_t(tmp_path, decoder):
    path = make_index_video(tmp_path / "v.mp4", 4)
    clip = read(path, 10, decoder=decoder)
    assert decoded_indices(clip) == video.sample_indices(4, 10)[0].tolist()
    assert clip.valid == 4


def _patch_avi_frame_count(path: str, count: int) -> None:
    """Overstate the frame count in an AVI's main header (dwTotalFrames) and stream header (dwLength)."""
    data = bytearray(open(path, "rb").read())
    i = data.find(b"avih")
    struct.pack_into("<I", data, i + 8 + 16, count)
    j = data.find(b"strh")
    struct.pack_into("<I", data, j + 8 + 32, count)
    open(path, "wb").write(bytes(data))


def test_overstated_frame_count_resamples(tmp_path, decoder):
    path = make_index_video(tmp_path / "v.avi", 40, fourcc="MJPG")
    _patch_avi_frame_count(path, 400)
    stated = video.probe(path).frame_count
    clip = read(path, 5, decoder=decoder)
    if stated == 40:
        pytest.skip("OpenCV recounted the frames itself; nothing to correct")
    assert clip.frame_count == 40
    assert decoded_indices(clip) == video.sample_indices(40, 5)[0].tolist()
    assert any("states" in n for n in clip.notes)


def test_truncated_avi_keeps_the_frames_that_decode(tmp_path, decoder):
    """A file cut short whose header survives: sampled from the frames that really decode, with a note."""
    path = make_index_video(tmp_path / "v.avi", 60, fourcc="MJPG")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    clip = read(path, 5, decoder=decoder)
    assert 0 < clip.frame_count < 60
    assert decoded_indices(clip) == video.sample_indices(clip.frame_count, 5)[0].tolist()
    assert clip.notes


@pytest.mark.parametrize("kind", ["zero", "text", "random", "truncated", "folder", "missing", "dangling_link",
                                  "unreadable"])
def test_failures_raise_video_error(tmp_path, kind, decoder):
    p = tmp_path / "bad.mp4"
    if kind == "zero":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a video\n" * 50)
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        make_index_video(p, 60)
        data = p.read_bytes()
        p.write_bytes(data[:len(data) // 3])
    elif kind == "dangling_link":
        os.symlink(tmp_path / "gone.mp4", p)
    elif kind == "folder":
        p.mkdir()
    elif kind == "unreadable":
        make_index_video(p, 10)
        os.chmod(p, 0)
        if os.access(p, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(VideoError) as e:
        read(p, 5, decoder=decoder)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg


# ----------------------------------------------------------------------------------------------------------
# PyAV: only the needed pictures are decoded, the frames are the same as OpenCV's
# ----------------------------------------------------------------------------------------------------------
def _no_opencv_decoding(monkeypatch) -> None:
    """Make the OpenCV path fail loudly, so a test proves the PyAV path itself returned the frames."""
    def boom(*a, **k):
        raise AssertionError("the OpenCV decoding path was used")

    monkeypatch.setattr(video, "_decode_indices", boom)


@pytest.mark.parametrize("gop,bframes,frames", [(30, 3, 7), (250, 3, 25), (1, 0, 5), (12, 2, 40)])
def test_pyav_h264_frames_are_exact_and_equal_opencv(tmp_path, monkeypatch, gop, bframes, frames):
    path = make_h264_video(tmp_path / "v.mp4", 300, gop=gop, bframes=bframes)
    ref = read(path, frames, decoder="opencv")
    _no_opencv_decoding(monkeypatch)
    got = read(path, frames, decoder="pyav")
    want = video.sample_indices(300, frames)[0].tolist()
    assert decoded_indices(got) == want
    assert np.array_equal(got.frames, ref.frames)  # same pixels, not only the same frames
    assert np.allclose(got.times, ref.times) and got.frame_count == ref.frame_count and got.fps == ref.fps


def test_pyav_skips_groups_and_unreferenced_pictures(tmp_path, monkeypatch):
    """With 300 frames, keyframes every 30 and 3 frames wanted, most packets are never decoded."""
    path = make_h264_video(tmp_path / "v.mp4", 300, gop=30, bframes=3)
    import av

    decoded = []
    real = av.codec.context.CodecContext.decode

    def counting(self, packet=None):
        out = real(self, packet)
        decoded.extend(out)
        return out

    monkeypatch.setattr(av.codec.context.CodecContext, "decode", counting)
    clip = read(path, 3, decoder="pyav")
    assert decoded_indices(clip) == video.sample_indices(300, 3)[0].tolist()
    assert len(decoded) < 100  # 3 groups of 30 at most, less their unreferenced B-frames


def test_pyav_fps_sampling_is_exact(tmp_path, monkeypatch):
    path = make_h264_video(tmp_path / "v.mp4", 200, fps=20, gop=40)
    _no_opencv_decoding(monkeypatch)
    clip = read(path, 6, "fps=2", decoder="pyav")
    assert decoded_indices(clip) == [0, 10, 20, 30, 40, 50]


def test_pyav_hands_off_the_grid_files_to_opencv(tmp_path):
    """Timestamps between frame slots (variable rate): the PyAV path refuses, the OpenCV path reads it."""
    path = make_h264_video(tmp_path / "v.mp4", 120, gop=30, pts_jitter=True)
    fps = video.probe(path).fps
    idx = video.sample_indices(video.probe(path).frame_count, 5)[0]
    assert video._pyav_frames(path, idx, fps, SIDE, SIDE) is None
    assert np.array_equal(read(path, 5, decoder="pyav").frames, read(path, 5, decoder="opencv").frames)


def test_unknown_decoder_is_one_line_error():
    with pytest.raises(InputError, match="decoder must be one of"):
        video.check_decoder("ffmpeg")
