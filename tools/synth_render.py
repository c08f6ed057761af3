"""Drawing side of the synthetic corpus: glosses as motions, signers, frames.

``signstream.tools.synth`` decides what a corpus holds; this module decides how a sentence
looks. Invariants: a gloss draws the same in every corpus (fixed seed), and a reversed pair
of glosses differs only in temporal order. Why: docs/design/synthetic.md
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

ON, OFF = "__ON__", "__OFF__"

# Content glosses in vocabulary order: ``vocabulary(n)`` takes the first n, so
# prefixed forms are spread through the list and even a small vocabulary
# exercises the evaluation cleanup (``loc-``/``cl-`` prefixes).
WORDS = (
    "REGEN", "SONNE", "WOLKE", "loc-NORD", "SCHNEE", "WIND", "GEWITTER", "NEBEL",
    "cl-KOMMEN", "FROST", "TEMPERATUR", "HEUTE", "MORGEN", "loc-SUED", "ABEND", "NACHT",
    "WARM", "KALT", "NORD", "SUED", "cl-ZIEHEN", "WEST", "OST", "loc-WEST",
    "TAG", "WOCHE", "MONTAG", "DIENSTAG", "MITTWOCH", "loc-OST", "DONNERSTAG", "FREITAG",
    "SAMSTAG", "SONNTAG", "KUEHL", "MILD", "cl-WOLKE", "HEISS", "STARK", "SCHWACH",
    "MAESSIG", "FRISCH", "loc-REGION", "WECHSELHAFT", "FREUNDLICH", "TROCKEN", "NASS", "SCHAUER",
    "GLATT", "cl-REGEN", "HAGEL", "STURM", "BOEE", "HOCH", "TIEF", "loc-KUESTE",
    "DRUCK", "LUFT", "KOMMEN", "BLEIBEN", "ZIEHEN", "STEIGEN", "loc-BERG", "SINKEN",
    "AUCH", "DANN", "JETZT", "MEHR", "WENIG", "VIEL", "loc-MITTE", "UEBERWIEGEND",
    "REGION", "KUESTE", "BERG", "MEER", "ALPEN", "FLUSS", "DEUTSCHLAND", "BAYERN",
    "MITTE", "LAND", "GRENZE", "LIEB", "ZUSCHAUER", "BEGRUESSEN", "GUT", "WETTER",
    "SPAETER", "FRUEH", "MITTAG", "MINUS", "PLUS", "ZEHN", "ZWANZIG", "DREISSIG",
)  # fmt: skip

AMPLITUDE = 0.42  # path size in body units
MOTION_SEED = 2014  # fixed: glosses look the same whatever the corpus seed


def vocabulary(size: int | None = None) -> list[str]:
    """Content glosses of a corpus with ``size`` glosses (all when None).

    ``__ON__``/``__OFF__`` are not counted: they are sentence markers that the
    corpus adds on top of the content vocabulary.
    """
    return list(WORDS if size is None else WORDS[:size])


# --------------------------------------------------------------------------- paths
# A path maps phase t (n,) and an angle to offsets (n, 2) in units of
# AMPLITUDE and a hand-size factor (n,). Plain functions so reversal is exact.


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _ones(t: np.ndarray) -> np.ndarray:
    return np.ones_like(t)


def _line(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    return (t - 0.5)[:, None] * _unit(a), _ones(t)


def _arc(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    ang = a + math.pi * t
    return 0.5 * np.stack([np.cos(ang), np.sin(ang)], 1), _ones(t)


def _circle(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    ang = a + 2 * math.pi * t
    return 0.4 * np.stack([np.cos(ang), np.sin(ang)], 1), _ones(t)


def _spiral(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    ang, r = a + 3 * math.pi * t, 0.08 + 0.45 * t
    return r[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1), _ones(t)


def _zigzag(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    tri = 2 * np.abs(2 * ((1.5 * t) % 1) - 1) - 1  # triangle wave, 1.5 periods
    along = (t - 0.5)[:, None] * _unit(a)
    return along + 0.22 * tri[:, None] * _unit(a + math.pi / 2), _ones(t)


def _tap(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    return 0.5 * np.abs(np.sin(2 * math.pi * t))[:, None] * _unit(a), _ones(t)


def _wave(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    return 0.35 * np.sin(4 * math.pi * t)[:, None] * _unit(a), _ones(t)


def _open(t: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    return 0.12 * (t - 0.5)[:, None] * _unit(a), 0.55 + 0.9 * t


PATHS = {
    "line": _line, "arc": _arc, "circle": _circle, "spiral": _spiral,
    "zigzag": _zigzag, "tap": _tap, "wave": _wave, "open": _open,
}  # fmt: skip
# Angles per path family; (family, angle) is one distinct path shape.
PATH_ANGLES = {
    "line": (0.0, 0.25 * math.pi, 0.5 * math.pi, 0.75 * math.pi),
    "arc": (0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi),
    "circle": (0.0,), "spiral": (0.0,), "zigzag": (0.0, 0.5 * math.pi),
    "tap": (0.0, 0.5 * math.pi), "wave": (0.0, 0.5 * math.pi), "open": (0.0,),
}  # fmt: skip
# Families whose reverse is a different-looking motion; tap is a palindrome
# and wave's reverse is only a phase shift, so neither forms reversed pairs.
REVERSIBLE = frozenset({"line", "arc", "circle", "spiral", "zigzag", "open"})

LOCATIONS = {
    "chest": (0.0, 0.05), "chin": (0.05, -0.42), "forehead": (0.1, -0.8),
    "shoulder": (0.42, -0.2), "side": (0.62, 0.25), "stomach": (0.05, 0.5),
    "high": (0.55, -0.72), "cross": (-0.3, 0.1), "low": (0.3, 0.5),
}  # fmt: skip
SIGN_LOCATIONS = tuple(k for k in LOCATIONS if k != "low")  # "low" is for __ON__/__OFF__
HAND_MODES = ("one", "mirror", "parallel", "base")


# --------------------------------------------------------------------------- motions
@dataclass(frozen=True)
class Motion:
    """How one gloss is signed.

    Attributes:
        gloss: the gloss token.
        path: key of ``PATHS``; ``angle`` orients it.
        location: key of ``LOCATIONS`` (the path's anchor on the body).
        shape: key of ``SHAPES`` (dominant hand shape).
        hands: one of ``HAND_MODES``.
        hand_angle: base orientation of the hand shape, radians.
        reverse: run the path's phases backwards.
        reverse_of: the gloss this one is the exact time reverse of, if any.
    """

    gloss: str
    path: str
    angle: float
    location: str
    shape: str
    hands: str
    hand_angle: float
    reverse: bool = False
    reverse_of: str | None = None


def _build_motions() -> dict[str, Motion]:
    """Give every gloss in ``WORDS`` (and ON/OFF) its own motion.

    Every single gloss or reversed pair gets a distinct (path, location)
    combination, so no two glosses share a trajectory at the same place.
    About one unit in five is a reversed pair (same path and place, opposite
    direction), so temporal order matters for those glosses.
    """
    rng = np.random.default_rng(MOTION_SEED)
    combos = [(f, a, loc) for f, angles in PATH_ANGLES.items() for a in angles
              for loc in SIGN_LOCATIONS]  # fmt: skip
    order = rng.permutation(len(combos))
    shapes = list(SHAPES)
    motions = {
        ON: Motion(ON, "line", 0.5 * math.pi, "low", "flat", "mirror", 0.0, reverse=True),
        OFF: Motion(OFF, "line", 0.5 * math.pi, "low", "flat", "mirror", 0.0, reverse_of=ON),
    }
    i, unit, want_pair = 0, 0, True
    while i < len(WORDS):
        family, angle, loc = combos[order[unit]]
        unit += 1
        kw = dict(path=family, angle=angle, location=loc,
                  shape=shapes[int(rng.integers(len(shapes)))],
                  hands=str(rng.choice(HAND_MODES, p=[0.5, 0.2, 0.15, 0.15])),
                  hand_angle=float(rng.uniform(0, math.pi)))  # fmt: skip
        if family in REVERSIBLE and want_pair and i + 1 < len(WORDS):
            a, b = WORDS[i], WORDS[i + 1]
            motions[a] = Motion(a, **kw)
            motions[b] = Motion(b, **kw, reverse=True, reverse_of=a)
            i, want_pair = i + 2, False
        else:
            rev = family in REVERSIBLE and bool(rng.random() < 0.5)
            motions[WORDS[i]] = Motion(WORDS[i], **kw, reverse=rev)
            i += 1
            want_pair = want_pair or unit % 5 == 0
    return motions


# --------------------------------------------------------------------------- hands
class HandPose(NamedTuple):
    """One hand in one frame: body-unit position, size factor, angle, shape."""

    u: float
    v: float
    scale: float
    angle: float
    shape: str


Poses = tuple[HandPose, HandPose]  # (dominant, other)
REST: Poses = (HandPose(0.32, 0.85, 0.9, 1.3, "fist"), HandPose(-0.32, 0.85, 0.9, 1.8, "fist"))


def sign_track(gloss: str, num_frames: int) -> list[Poses]:
    """Hand poses of one sign over ``num_frames`` frames (no transitions).

    Args:
        gloss: a key of ``GLOSS_MOTIONS``.
        num_frames: frames the sign lasts (>= 2).

    Returns:
        One ``(dominant, other)`` pose pair per frame.
    """
    m = GLOSS_MOTIONS[gloss]
    t = np.linspace(0.0, 1.0, num_frames)
    if m.reverse:
        t = t[::-1]  # the same phases backwards: reversed pairs mirror exactly
    offsets, scales = PATHS[m.path](t, m.angle)
    offsets = offsets * AMPLITUDE
    au, av = LOCATIONS[m.location]
    if m.hands == "mirror":
        au = max(abs(au), 0.22)  # keep mirrored hands apart at the midline
    spin = 1.5 if m.path == "open" else 0.8
    track = []
    for (du, dv), s, tt in zip(offsets, scales, t, strict=True):
        ang = m.hand_angle + spin * (tt - 0.5)
        dom = HandPose(au + du, av + dv, float(s), ang, m.shape)
        track.append((dom, _other_hand(m, dom, au, av)))
    return track


def _other_hand(m: Motion, dom: HandPose, au: float, av: float) -> HandPose:
    if m.hands == "mirror":
        return HandPose(-dom.u, dom.v, dom.scale, math.pi - dom.angle, dom.shape)
    if m.hands == "parallel":
        return dom._replace(u=dom.u - 0.3)
    if m.hands == "base":  # a flat, still base hand under the moving one
        return HandPose(au - 0.05, av + 0.2, 1.0, 0.0, "flat")
    return REST[1]


def _blend(a: Poses, b: Poses, k: int) -> list[Poses]:
    """``k`` transition frames strictly between poses a and b (smoothstep)."""
    out = []
    for j in range(1, k + 1):
        x = j / (k + 1)
        s = x * x * (3 - 2 * x)
        out.append(tuple(
            HandPose(p.u + (q.u - p.u) * s, p.v + (q.v - p.v) * s,
                     p.scale + (q.scale - p.scale) * s, p.angle + (q.angle - p.angle) * s,
                     p.shape if s < 0.5 else q.shape)
            for p, q in zip(a, b, strict=True)))  # fmt: skip
    return out


def timeline(glosses: list[str], rng: np.random.Generator, gloss_frames: int, transition_frames: int) -> list[Poses]:
    """Poses of a whole video: rest, signs with transitions, rest.

    Signing speed varies per video by +-30 % and per sign by +-10 %.

    Args:
        glosses: the sentence (keys of ``GLOSS_MOTIONS``).
        rng: the video's generator.
        gloss_frames: nominal frames per sign at average speed.
        transition_frames: nominal frames between two signs.
    """
    pace = rng.uniform(0.7, 1.3)
    poses: list[Poses] = [REST] * int(rng.integers(2, 4))
    prev = REST
    for g in glosses:
        n = max(3, round(gloss_frames * pace * rng.uniform(0.9, 1.1)))
        k = max(1, round(transition_frames * pace * rng.uniform(0.8, 1.2)))
        track = sign_track(g, n)
        poses += _blend(prev, track[0], k) + track
        prev = track[-1]
    k = max(1, round(transition_frames * pace))
    return poses + _blend(prev, REST, k) + [REST] * int(rng.integers(2, 4))


# --------------------------------------------------------------------------- shapes
SHIFT = 4  # cv2 fractional bits: sub-pixel positions keep slow motion smooth
_ONE = 1 << SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * _ONE), round(y * _ONE)


def _ellipse(img, x, y, ax, ay, angle, color) -> None:
    axes = (max(_ONE, round(ax * _ONE)), max(_ONE // 2, round(ay * _ONE)))
    cv2.ellipse(img, _pt(x, y), axes, math.degrees(angle), 0, 360, color, -1,
                cv2.LINE_AA, SHIFT)  # fmt: skip


def _finger(img, x, y, r, angle, color, dist=0.15, length=0.1) -> None:
    fx, fy = x + math.cos(angle) * dist * r, y + math.sin(angle) * dist * r
    _ellipse(img, fx, fy, length * r, 0.03 * r, angle, color)


def _shape_flat(img, x, y, r, angle, color) -> None:
    _ellipse(img, x, y, 0.17 * r, 0.085 * r, angle, color)


def _shape_fist(img, x, y, r, angle, color) -> None:
    _ellipse(img, x, y, 0.11 * r, 0.1 * r, angle, color)


def _shape_point(img, x, y, r, angle, color) -> None:
    _ellipse(img, x, y, 0.1 * r, 0.08 * r, angle, color)
    _finger(img, x, y, r, angle, color)


def _shape_vee(img, x, y, r, angle, color) -> None:
    _ellipse(img, x, y, 0.095 * r, 0.085 * r, angle, color)
    _finger(img, x, y, r, angle - 0.35, color)
    _finger(img, x, y, r, angle + 0.35, color)


def _shape_spread(img, x, y, r, angle, color) -> None:
    k = np.arange(10)
    rad = np.where(k % 2 == 0, 0.2, 0.085) * r
    ang = angle + k * math.pi / 5
    pts = np.stack([x + rad * np.cos(ang), y + rad * np.sin(ang)], 1)
    cv2.fillPoly(img, [np.round(pts * _ONE).astype(np.int32)], color, cv2.LINE_AA, SHIFT)


SHAPES = {
    "flat": _shape_flat, "fist": _shape_fist, "point": _shape_point,
    "vee": _shape_vee, "spread": _shape_spread,
}  # fmt: skip


GLOSS_MOTIONS: dict[str, Motion] = _build_motions()
REVERSED_PAIRS: list[tuple[str, str]] = [(m.reverse_of, g) for g, m in GLOSS_MOTIONS.items() if m.reverse_of]


# --------------------------------------------------------------------------- signers
@dataclass(frozen=True)
class Signer:
    """A signer's look: colours (RGB), size, placement and studio background.

    ``blobs`` are soft background patches ``(x, y, radius, dr, dg, db)`` in
    frame fractions, fixed per signer like a recording studio.
    """

    ident: str
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    cloth: tuple[int, int, int]
    sleeve: tuple[int, int, int]
    size: float
    dx: float
    dy: float
    bg_top: tuple[int, int, int]
    bg_bottom: tuple[int, int, int]
    blobs: tuple[tuple[float, ...], ...]


_SKIN = ((226, 178, 146), (198, 142, 108), (240, 196, 168), (165, 114, 84), (214, 166, 128),
         (128, 86, 64), (233, 188, 156), (186, 132, 98), (250, 210, 180))  # fmt: skip
_CLOTH = ((28, 28, 34), (22, 32, 66), (54, 54, 60), (66, 22, 28), (22, 50, 34),
          (40, 36, 78), (14, 14, 16), (76, 64, 52), (46, 22, 56))  # fmt: skip
_HAIR = ((34, 24, 18), (86, 56, 32), (156, 116, 64), (22, 22, 22), (120, 118, 114))


def make_signers(seed: int, count: int) -> list[Signer]:
    """Build ``count`` distinct signers ``Signer01``... from ``seed``."""
    rng = np.random.default_rng([seed, 0x516E])
    order = rng.permutation(len(_CLOTH))
    signers = []

    def jitter(c, amount=10):
        return tuple(int(np.clip(x + rng.integers(-amount, amount + 1), 0, 255)) for x in c)

    for k in range(count):
        grey = int(rng.integers(105, 175))
        tint = rng.integers(-18, 19, 3)
        top = tuple(int(np.clip(grey + 25 + d, 0, 255)) for d in tint)
        bottom = tuple(int(np.clip(grey - 25 + d, 0, 255)) for d in tint)
        blobs = tuple((float(rng.uniform(0, 1)), float(rng.uniform(0, 1)),
                       float(rng.uniform(0.08, 0.3)), *map(float, rng.uniform(-30, 30, 3)))
                      for _ in range(int(rng.integers(3, 6))))  # fmt: skip
        cloth = jitter(_CLOTH[order[k % len(order)]])
        signers.append(Signer(
            ident=f"Signer{k + 1:02d}", skin=jitter(_SKIN[(k + seed) % len(_SKIN)], 8),
            hair=jitter(_HAIR[int(rng.integers(len(_HAIR)))]), cloth=cloth,
            sleeve=tuple(min(255, c + 55) for c in cloth), size=float(rng.uniform(0.85, 1.12)),
            dx=float(rng.uniform(-0.08, 0.08)), dy=float(rng.uniform(-0.03, 0.05)),
            bg_top=top, bg_bottom=bottom, blobs=blobs))  # fmt: skip
    return signers


# --------------------------------------------------------------------------- painting
class Painter:
    """Draws frames of one video: a fixed background + body, moving arms and hands.

    Args:
        signer: who signs.
        height, width: frame size in pixels.
        rng: the video's generator (background lighting, noise).
        noise: per-frame luma noise amplitude in grey levels (0 = none). Kept
            small so lossy codecs can still reach ~40 dB PSNR.
    """

    def __init__(
        self, signer: Signer, height: int, width: int, rng: np.random.Generator | None = None, noise: int = 0
    ) -> None:
        self.signer, self.h, self.w = signer, height, width
        self.scale = 0.45 * height * signer.size  # pixels per body unit
        self.cx = width * (0.5 + signer.dx)
        self.cy = height * (0.56 + signer.dy)
        light = 0.0 if rng is None else float(rng.uniform(-6, 6))  # per-video lighting
        self.base = self._draw_body(self._background(light))
        self.noise = noise
        self.up = self.down = None
        if noise > 0:
            # A pool larger than the frame; each frame takes a random window of it,
            # which is much cheaper than drawing fresh noise per frame. Split into
            # a positive and a negative part so cv2's saturating add/subtract apply
            # it in two fast passes (same result as int16 add + clip).
            pool = rng.integers(-noise, noise + 1, (height + 16, width + 16, 1), dtype=np.int16)
            self.up = np.repeat(np.maximum(pool, 0).astype(np.uint8), 3, axis=2)
            self.down = np.repeat(np.maximum(-pool, 0).astype(np.uint8), 3, axis=2)

    def px(self, u: float, v: float) -> tuple[float, float]:
        """Body units -> pixel coordinates."""
        return self.cx + u * self.scale, self.cy + v * self.scale

    def _background(self, light: float) -> np.ndarray:
        s = self.signer
        ys = np.linspace(0.0, 1.0, self.h, dtype=np.float32)[:, None, None]
        xs = np.linspace(0.0, 1.0, self.w, dtype=np.float32)[None, :, None]
        top, bottom = np.float32(s.bg_top), np.float32(s.bg_bottom)
        img = top * (1 - ys) + bottom * ys + np.zeros((1, self.w, 1), np.float32)
        for bx, by, r, *col in s.blobs:
            weight = np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * r * r))
            img += weight * np.float32(col)
        return np.clip(img + light, 0, 255).astype(np.uint8)

    def _draw_body(self, img: np.ndarray) -> np.ndarray:
        s, k = self.signer, self.scale
        torso = [(-0.42, -0.33), (0.42, -0.33), (0.58, 1.6), (-0.58, 1.6)]
        pts = np.array([self.px(u, v) for u, v in torso]) * _ONE
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], s.cloth, cv2.LINE_AA, SHIFT)
        _ellipse(img, *self.px(0, -0.38), 0.08 * k, 0.1 * k, 0.0, s.skin)  # neck
        _ellipse(img, *self.px(0, -0.68), 0.17 * k, 0.2 * k, 0.0, s.hair)
        _ellipse(img, *self.px(0, -0.62), 0.145 * k, 0.185 * k, 0.0, s.skin)
        return img

    def frame(self, poses: Poses, rng: np.random.Generator | None = None) -> np.ndarray:
        """Draw one RGB frame (uint8, H x W x 3) for ``(dominant, other)`` poses."""
        img = self.base.copy()
        k = self.scale
        for side, hand in zip((1, -1), poses, strict=True):
            shoulder = self.px(0.36 * side, -0.27)
            hand_px = self.px(hand.u, hand.v)
            elbow = self.px((0.36 * side + hand.u) / 2 + 0.2 * side, max(-0.27, hand.v) / 2 + 0.35)
            for a, b, w in ((shoulder, elbow, 0.13), (elbow, hand_px, 0.1)):
                cv2.line(img, _pt(*a), _pt(*b), self.signer.sleeve, max(1, round(w * k)),
                         cv2.LINE_AA, SHIFT)  # fmt: skip
        for hand in poses:
            SHAPES[hand.shape](img, *self.px(hand.u, hand.v), k * hand.scale, hand.angle,
                                  self.signer.skin)  # fmt: skip
        if self.up is not None and rng is not None:
            oy, ox = rng.integers(0, 17, 2)
            window = np.s_[oy : oy + self.h, ox : ox + self.w]
            img = cv2.subtract(cv2.add(img, self.up[window]), self.down[window])
        return img


def render_sign(
    gloss: str, num_frames: int, *, height: int = 64, width: int = 80, signer: Signer | None = None
) -> np.ndarray:
    """Render one sign alone, noise-free: handy for tests and figures.

    Args:
        gloss: a key of ``GLOSS_MOTIONS``.
        num_frames: frames of the sign.
        height, width: frame size.
        signer: who signs (default: the first signer of seed 0).

    Returns:
        uint8 array ``[num_frames, height, width, 3]`` (RGB).
    """
    if gloss not in GLOSS_MOTIONS:
        raise KeyError(f"unknown gloss {gloss!r}")
    painter = Painter(signer or make_signers(0, 1)[0], height, width)
    return np.stack([painter.frame(p) for p in sign_track(gloss, num_frames)])


def render_video(
    glosses: list[str],
    signer: Signer,
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    gloss_frames: int = 8,
    transition_frames: int = 3,
    noise: int = 2,
):
    """Yield the RGB frames of one signed sentence, in temporal order.

    The generator ``rng`` drives everything random about the video (speed,
    lighting, noise), so the same generator state gives the same frames.

    Args:
        glosses: the sentence (keys of ``GLOSS_MOTIONS``).
        signer: who signs.
        rng: the video's generator.
        height, width: frame size.
        gloss_frames: nominal frames per sign.
        transition_frames: nominal frames between signs.
        noise: per-frame luma noise amplitude (grey levels).

    Yields:
        uint8 arrays ``[height, width, 3]``.
    """
    poses = timeline(glosses, rng, gloss_frames, transition_frames)
    painter = Painter(signer, height, width, rng, noise)
    for p in poses:
        yield painter.frame(p, rng)
