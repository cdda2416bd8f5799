"""The colour ops of RandAugment on the CPU, per sample, as DALI's CPU operators compute them.

Brightness, Color, Contrast, Sharpness and AutoContrast of `dalidr.augment.ops`, each a numba
function over one uint8 HWC image with the uniform signature `(src, dst, magnitude, fill)` of
this package: `magnitude` is the signed float32 magnitude DALI's `auto_aug` picks for the stored
bin, mapped to the op's parameter as its `mag_to_param` does (`1 + m` for the enhance factors,
the float32 3x3 kernel of `ops._sharpness_kernel`); `fill` is unused.

Stores labelled through DALI must replay to the same pixels, so each op repeats the float32
arithmetic of the DALI CPU operator behind it, in its order:
- brightness, contrast (`fn.brightness`, `fn.brightness_contrast`: DALI's multiply-add kernel):
  a 256-entry table of `v * multiplier + addend`, the addend `centre - factor * centre`;
- color (`fn.saturation`: DALI's colour twist): the 3x3 matrix `yiq2rgb . diag(1, f, f) .
  rgb2yiq`, `yiq2rgb` being DALI's float32 Gauss-Jordan inverse of `rgb2yiq` (with fused
  multiply-adds), the products as float32 dot products, then `m0 * r + m1 * g + m2 * b` per
  output channel, left to right, without fusing;
- contrast's centre: OpenCV's RGB to grey (`(9798 r + 19235 g + 3735 b + 2^14) >> 15`, what
  DALI's CPU colour-space conversion calls), averaged as DALI's CPU mean reduces: float32
  partial sums over halves down to runs of at most 32, times float32(1 / count);
- sharpness (`fn.filter`, clamped border: OpenCV's `filter2D`): per output value, the nine taps
  in row-major order, accumulated with fused multiply-adds as OpenCV's AVX2/AVX-512 code does,
  except for the last `(3 * width) % 4` values of each row, which OpenCV's scalar tail sums
  unfused; rounded half to even, as OpenCV does;
- auto_contrast (`fn.normalize` with the per-channel low and spread of `ops.auto_contrast`):
  `(v - low) * (1 / stddev)`, stddev = `spread * float32(1 / 255)`, a table per channel.
DALI's conversions to uint8 round half away from zero and saturate. Trade-off: sharpness is
exact against DALI on a CPU with FMA (any x86 with AVX2); DALI itself gives other pixels on a
CPU without it, since OpenCV then multiplies and adds separately. `tests/test_cpu_colour.py`
checks every op, bin and sign against DALI's graph.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
from numba import njit
from numba.core import types as nbtypes
from numba.extending import intrinsic

__all__ = ["brightness", "color", "contrast", "sharpness", "auto_contrast"]

_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_BLUR_EDGE = np.float32(1.0) / np.float32(13.0)  # ops._sharpness_kernel's blur / 13, in float32
_BLUR_CENTRE = np.float32(5.0) / np.float32(13.0)
_INV_255 = np.float32(1 / 255.0)  # ops.auto_contrast's Python constant, a float32 in DALI
_GREY_SHIFT = 15  # OpenCV's RGB2Gray<uchar>: 15-bit fixed point, rounded
_GREY_R, _GREY_G, _GREY_B = 9798, 19235, 3735
_CHUNK = 256  # pixels `_color` splits into planes at a time (a schedule, not a result)
_MEAN_RUN = 32  # DALI's CPU reduction sums runs of at most this many values in order
# DALI's RGB to YIQ matrix (color_twist.h), in float32.
_RGB2YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]], dtype=np.float32
)


def _fma_float32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """`a * b + c` rounded once to float32 (ties to even), as C's fmaf."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    near = np.float32(float(exact))  # within one float32 step of the answer
    candidates = (
        near,
        np.nextafter(near, np.float32(np.inf)),
        np.nextafter(near, np.float32(-np.inf)),
    )
    return min(
        candidates,
        key=lambda x: (abs(Fraction(float(x)) - exact), int(x.view(np.uint32)) & 1),
    )


def _yiq_to_rgb() -> np.ndarray:
    """DALI's `inverse(Rgb2Yiq)`: Gauss-Jordan with partial pivoting in float32 (mat.h's
    `solve_gauss`), its row updates as fused multiply-adds. A constant, computed once."""
    a = _RGB2YIQ.copy()
    b = np.eye(3, dtype=np.float32)
    for v in range(3):
        pivot = max(range(v, 3), key=lambda i: (abs(a[i, v]), -i))  # the first largest
        a[[v, pivot]], b[[v, pivot]] = a[[pivot, v]], b[[pivot, v]]
        scale = np.float32(_ONE / a[v, v])
        a[v, v] = _ONE
        a[v, v + 1 :] *= scale
        b[v] *= scale
        for i in range(3):
            if i == v:
                continue
            c = np.float32(-a[i, v])
            a[i, v] = 0
            for j in range(v + 1, 3):
                a[i, j] = _fma_float32(c, a[v, j], a[i, j])
            for j in range(3):
                b[i, j] = _fma_float32(c, b[v, j], b[i, j])
    return b


_YIQ2RGB = _yiq_to_rgb()


def _fma_float32_typer(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    if not all(t == nbtypes.float32 for t in (a, b, c)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fma(*args)

    return nbtypes.float32(nbtypes.float32, nbtypes.float32, nbtypes.float32), codegen


# float32 `a * b + c` rounded once (LLVM's fma) inside numba code: OpenCV's vector filter
# accumulates so. Called with float32 arguments only.
_fma: Any = intrinsic(_fma_float32_typer)


@njit(cache=True, nogil=True, inline="always")
def _round_away(value: np.float32) -> np.uint8:
    # DALI's ConvertSat<uint8_t>(float): std::round (half away from zero), then saturate.
    # Saturating first gives the same level, and the code has no branch (it vectorises).
    clamped = min(max(value, np.float32(0.0)), np.float32(255.0))
    whole = np.int32(clamped)  # truncates
    return np.uint8(whole + np.int32(clamped - np.float32(whole) >= _HALF))


@njit(cache=True, nogil=True, inline="always")
def _round_even(value: np.float32) -> np.uint8:
    # OpenCV's saturate_cast<uchar>(float) and v_round: half to even, then saturate.
    return np.uint8(np.int32(np.rint(min(max(value, np.float32(0.0)), np.float32(255.0)))))


@njit(cache=True, nogil=True)
def _apply_lut(src: Any, dst: Any, lut: Any) -> None:
    """dst = lut[src], one table for every channel."""
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    for i in range(flat_src.size):
        flat_dst[i] = lut[flat_src[i]]


@njit(cache=True, nogil=True)
def _multiply_add(src: Any, dst: Any, multiplier: np.float32, addend: np.float32) -> None:
    """DALI's MultiplyAddCpu for uint8: a table of ConvertSat(v * multiplier + addend)."""
    lut = np.empty(256, dtype=np.uint8)
    for v in range(256):
        lut[v] = _round_away(np.float32(v) * multiplier + addend)
    _apply_lut(src, dst, lut)


@njit(cache=True, nogil=True)
def brightness(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # fn.brightness(brightness=1 + m): multiplier 1 * factor, addend factor * (128 - 1 * 128).
    factor = _ONE + np.float32(magnitude)
    _multiply_add(src, dst, factor, np.float32(0.0))


@njit(cache=True, nogil=True)
def _grey_sum(flat: Any) -> np.float32:
    """DALI's CPU sum of the grey levels: two halves (the first `count >> 1` values) summed
    apart and added in float32, down to runs of at most 32 summed in order.

    The recursion is walked with an explicit stack (numba's cache cannot reload recursive
    functions): a task is a range, or (-1) "add the last two sums".
    """
    starts = np.empty(256, dtype=np.int64)  # 2 tasks a level: enough for 2^127 values
    counts = np.empty(256, dtype=np.int64)
    sums = np.empty(128, dtype=np.float32)
    starts[0], counts[0] = 0, flat.size
    tasks, done = 1, 0
    while tasks > 0:
        tasks -= 1
        start, count = starts[tasks], counts[tasks]
        if start < 0:
            done -= 1
            sums[done - 1] = sums[done - 1] + sums[done]
        elif count <= _MEAN_RUN:
            run = 0
            for i in range(start, start + count):
                run += flat[i]
            sums[done] = np.float32(run)  # at most 32 * 255: float32 holds it exactly
            done += 1
        else:
            half = count >> 1
            starts[tasks], counts[tasks] = -1, 0
            starts[tasks + 1], counts[tasks + 1] = start + half, count - half
            starts[tasks + 2], counts[tasks + 2] = start, half
            tasks += 3
    return sums[0]


@njit(cache=True, nogil=True)
def _mean_grey(src: Any) -> np.float32:
    """fn.reductions.mean of OpenCV's grey image of `src`, as DALI's CPU computes it."""
    height, width = src.shape[0], src.shape[1]
    count = height * width
    grey = np.empty(count, dtype=np.int32)
    flat = src.reshape(-1)
    for i in range(count):
        r, g, b = np.int32(flat[3 * i]), np.int32(flat[3 * i + 1]), np.int32(flat[3 * i + 2])
        grey[i] = (r * _GREY_R + g * _GREY_G + b * _GREY_B + (1 << (_GREY_SHIFT - 1))) >> (
            _GREY_SHIFT
        )
    if count * 255 < 1 << 24:
        # Every partial sum is an integer below 2^24, exact in float32: the order is moot.
        total = np.float32(grey.sum())
    else:
        total = _grey_sum(grey)
    return np.float32(total * np.float32(1.0 / count))


@njit(cache=True, nogil=True)
def contrast(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # fn.brightness_contrast(contrast=1 + m, contrast_center=mean grey): multiplier factor,
    # addend 1 * (centre - factor * centre).
    factor = _ONE + np.float32(magnitude)
    centre = _mean_grey(src)
    _multiply_add(src, dst, factor, np.float32(centre - factor * centre))


@njit(cache=True, nogil=True)
def _saturation_matrix(factor: np.float32, yiq2rgb: Any, rgb2yiq: Any) -> Any:
    """DALI's colour-twist matrix for saturation `factor`: yiq2rgb . diag(1, f, f) . rgb2yiq.

    The other factors of DALI's product (brightness, contrast, hue 0, value) are identities and
    change nothing; each entry of the last product is a float32 dot product, left to right.
    """
    scaled = yiq2rgb.copy()
    for i in range(3):
        scaled[i, 1] = scaled[i, 1] * factor
        scaled[i, 2] = scaled[i, 2] * factor
    out = np.empty((3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(3):
            dot = scaled[i, 0] * rgb2yiq[0, j]
            dot = dot + scaled[i, 1] * rgb2yiq[1, j]
            out[i, j] = dot + scaled[i, 2] * rgb2yiq[2, j]
    return out


@njit(cache=True, nogil=True)
def _color(src: Any, dst: Any, factor: np.float32, yiq2rgb: Any, rgb2yiq: Any) -> None:
    m = _saturation_matrix(factor, yiq2rgb, rgb2yiq)
    m00, m01, m02 = m[0, 0], m[0, 1], m[0, 2]
    m10, m11, m12 = m[1, 0], m[1, 1], m[1, 2]
    m20, m21, m22 = m[2, 0], m[2, 1], m[2, 2]
    pixels_in, pixels_out = src.reshape(-1, 3), dst.reshape(-1, 3)
    count = pixels_in.shape[0]
    planes = np.empty((3, _CHUNK), dtype=np.float32)
    out = np.empty((3, _CHUNK), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        size = min(_CHUNK, count - start)
        for j in range(size):
            planes[0, j] = pixels_in[start + j, 0]
            planes[1, j] = pixels_in[start + j, 1]
            planes[2, j] = pixels_in[start + j, 2]
        r, g, b = planes[0], planes[1], planes[2]
        o0, o1, o2 = out[0], out[1], out[2]
        for j in range(size):
            o0[j] = _round_away(m00 * r[j] + m01 * g[j] + m02 * b[j])
            o1[j] = _round_away(m10 * r[j] + m11 * g[j] + m12 * b[j])
            o2[j] = _round_away(m20 * r[j] + m21 * g[j] + m22 * b[j])
        for j in range(size):
            pixels_out[start + j, 0] = o0[j]
            pixels_out[start + j, 1] = o1[j]
            pixels_out[start + j, 2] = o2[j]


@njit(cache=True, nogil=True)
def color(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # fn.saturation(saturation=1 + m): DALI's colour twist (its offset is 0 here).
    _color(src, dst, _ONE + np.float32(magnitude), _YIQ2RGB, _RGB2YIQ)


@njit(cache=True, nogil=True)
def _sharpness_weights(magnitude: np.float32) -> Any:
    """ops._sharpness_kernel in float32: (1 + m) * centre - m * blur."""
    m = np.float32(magnitude)
    weights = np.empty(9, dtype=np.float32)
    for k in range(9):
        weights[k] = np.float32(0.0) - m * _BLUR_EDGE
    weights[4] = (_ONE + m) - m * _BLUR_CENTRE
    return weights


@njit(cache=True, nogil=True, inline="always")
def _tap_sum(
    above: Any, row: Any, below: Any, left: int, e: int, right: int, w: Any, fused: bool
) -> np.float32:
    """The nine taps of value `e` in row-major order: fused multiply-adds as OpenCV's vector
    loop, or a product then additions as its scalar tail."""
    if fused:
        s = above[left] * w[0]
        s = _fma(above[e], w[1], s)
        s = _fma(above[right], w[2], s)
        s = _fma(row[left], w[3], s)
        s = _fma(row[e], w[4], s)
        s = _fma(row[right], w[5], s)
        s = _fma(below[left], w[6], s)
        s = _fma(below[e], w[7], s)
        return _fma(below[right], w[8], s)
    s = above[left] * w[0]
    s = s + above[e] * w[1]
    s = s + above[right] * w[2]
    s = s + row[left] * w[3]
    s = s + row[e] * w[4]
    s = s + row[right] * w[5]
    s = s + below[left] * w[6]
    s = s + below[e] * w[7]
    return s + below[right] * w[8]


@njit(cache=True, nogil=True)
def _filter_row(above: Any, row: Any, below: Any, out: Any, w: Any, fused_end: int) -> None:
    """One output row of the clamped 3x3 filter over float32 HWC rows (3 values a pixel).

    Values before `fused_end` accumulate as OpenCV's vector loop, the rest as its scalar
    tail. The first and last pixels clamp their left and right taps; the loops between them
    have no branch, so that they vectorise.
    """
    n = row.size
    inner_end = max(n - 3, 3)
    fused_stop = min(max(fused_end, 3), inner_end)
    for e in range(3, fused_stop):
        out[e] = _round_even(_tap_sum(above, row, below, e - 3, e, e + 3, w, True))
    for e in range(fused_stop, inner_end):
        out[e] = _round_even(_tap_sum(above, row, below, e - 3, e, e + 3, w, False))
    for e in range(n):
        if 3 <= e < inner_end:
            continue
        left = e - 3 if e >= 3 else e
        right = e + 3 if e + 3 < n else e
        out[e] = _round_even(_tap_sum(above, row, below, left, e, right, w, e < fused_end))


@njit(cache=True, nogil=True)
def sharpness(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # fn.filter(kernel, border="clamp"): OpenCV's filter2D with a replicated border.
    height, width, channels = src.shape
    n = width * channels
    levels = src.reshape(height, n).astype(np.float32)
    rows_out = dst.reshape(height, n)
    w = _sharpness_weights(np.float32(magnitude))
    fused_end = n - n % 4  # OpenCV's last vector step is 4 values wide
    for y in range(height):
        above, below = levels[max(y - 1, 0)], levels[min(y + 1, height - 1)]
        _filter_row(above, levels[y], below, rows_out[y], w, fused_end)


@njit(cache=True, nogil=True)
def _channel_extremes(flat: Any) -> tuple[Any, Any]:
    """Each channel's lowest and highest level of a flattened HWC (3 channel) image.

    The running extremes are kept per position in a run of 48 values (16 pixels), so that the
    loop over the run vectorises; the runs' extremes then fold by channel.
    """
    lows = np.full(48, 255, dtype=np.uint8)
    highs = np.zeros(48, dtype=np.uint8)
    whole = flat.size - flat.size % 48
    runs = flat[:whole].reshape(-1, 48)
    for k in range(runs.shape[0]):
        run = runs[k]
        for j in range(48):
            lows[j] = min(lows[j], run[j])
            highs[j] = max(highs[j], run[j])
    for j in range(flat.size - whole):
        lows[j] = min(lows[j], flat[whole + j])
        highs[j] = max(highs[j], flat[whole + j])
    channel_lows = np.full(3, 255, dtype=np.uint8)
    channel_highs = np.zeros(3, dtype=np.uint8)
    for j in range(48):
        channel_lows[j % 3] = min(channel_lows[j % 3], lows[j])
        channel_highs[j % 3] = max(channel_highs[j % 3], highs[j])
    return channel_lows, channel_highs


@njit(cache=True, nogil=True)
def auto_contrast(src: Any, dst: Any, magnitude: float, fill: int) -> None:
    # ops.auto_contrast's CPU branch: fn.normalize per channel with mean = low (0 when flat)
    # and stddev = spread * float32(1 / 255) (255 * it when flat); its scale is 1 / stddev.
    lows, highs = _channel_extremes(src.reshape(-1))
    luts = np.empty((3, 256), dtype=np.uint8)
    for c in range(3):
        spread = np.float32(np.int32(highs[c]) - np.int32(lows[c]))
        mean = np.float32(lows[c]) if spread > 0 else np.float32(0.0)
        stddev = (spread if spread > 0 else np.float32(255.0)) * _INV_255
        scale = _ONE / stddev
        for v in range(256):
            luts[c, v] = _round_away((np.float32(v) - mean) * scale)
    lut_r, lut_g, lut_b = luts[0], luts[1], luts[2]
    pixels_in, pixels_out = src.reshape(-1, 3), dst.reshape(-1, 3)
    for i in range(pixels_in.shape[0]):
        pixels_out[i, 0] = lut_r[pixels_in[i, 0]]
        pixels_out[i, 1] = lut_g[pixels_in[i, 1]]
        pixels_out[i, 2] = lut_b[pixels_in[i, 2]]
