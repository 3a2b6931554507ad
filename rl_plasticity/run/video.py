"""Frames of a policy on screen: headless MuJoCo rendering setup, text captions, mp4 and GIF encoding.

Rendering needs no display and no GPU: with MUJOCO_GL=egl, MuJoCo renders offscreen through Mesa's
software EGL (llvmpipe). Gymnasium reads the variable when an env makes its first renderer (unset,
it tries GLFW first, which needs a display), so `use_headless_gl()` runs when the modules that
render are imported.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rl_plasticity.errors import UserError

# libx264 needs frame sides that are multiples of its macroblock (16); imageio would otherwise
# resize silently, so sizes are checked up front.
MACRO_BLOCK = 16
TRACKING_CAMERA = "track"  # follows the Ant's torso; a fixed camera loses it within seconds


def use_headless_gl() -> None:
    """Render offscreen through EGL unless the user chose a backend (MUJOCO_GL=osmesa/glfw)."""
    os.environ.setdefault("MUJOCO_GL", "egl")


def check_frame_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < MACRO_BLOCK or size % MACRO_BLOCK:
        raise UserError(f"video size (--video-size, eval.video_size) must be a positive multiple of {MACRO_BLOCK} "
                        f"pixels (e.g. 96, 240, 480), got {size!r}")
    return size


def caption(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """`frame` with `lines` written in its top-left corner on a dark band (a new array)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    # The text scales with the frame so it stays legible at 96 px and unobtrusive at 480 px.
    font = ImageFont.load_default(size=max(8, frame.shape[0] // 24))
    text = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((3, 2), text, font=font, spacing=1)
    draw.rectangle((0, 0, right + 3, bottom + 3), fill=(0, 0, 0))
    draw.multiline_text((3, 2), text, font=font, fill=(255, 255, 255), spacing=1)
    return np.asarray(image)


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode RGB frames (H x W x 3 uint8) to an H.264 mp4 at `path`, atomically.

    imageio-ffmpeg ships its own ffmpeg binary, so no system ffmpeg is needed.
    """
    import imageio.v2 as imageio

    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    if path.suffix.lower() != ".mp4":
        raise UserError(f"video file must end in .mp4, got {path}")
    if not path.parent.is_dir():
        raise UserError(f"video folder does not exist: {path.parent}")
    # ffmpeg picks the container from the suffix, so the temporary file keeps .mp4.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    try:
        imageio.mimsave(tmp, list(frames), fps=fps, macro_block_size=MACRO_BLOCK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def encode_gif(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """An animated GIF of the frames (TensorBoard's image dashboard plays these as videos)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 / fps)), loop=0)
    return out.getvalue()
