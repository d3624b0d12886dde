"""Abdominal anatomy of one phantom patient as tissue label maps, slice by slice.

Coordinates: u, v span the field of view from -1 to 1 (columns: patient right to left, rows: anterior to
posterior, the radiological view); organs are placed in body coordinates x = (u - ox) / bx and
y = (v - oy) / by, so they follow the patient's body size and position. t is height along the body in
units of an abdominal scan: 0 to 1 holds the kidneys up to just above the liver dome, the liver spans
[lo, hi]; the chest (lung bases, heart on the diaphragm, mediastinum, great vessels) lies above, up to
t = T_TOP, and the pelvis (iliac bones, bladder, bowel) below, down to t = T_BOTTOM. A scan protocol
(render.PROTOCOLS) picks which heights a patient's slices cover. Every shape is a deformed ellipse whose
boundary drifts smoothly with t.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ctseg.phantom.tissues import BONE, LABEL

T_BOTTOM, T_TOP = -0.8, 1.9   # the anatomy's extent: pubic symphysis to above the carina

@dataclasses.dataclass
class Shape:
    """A rotated ellipse in body coordinates with a wobbly boundary (angular harmonics drifting in t)."""
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0
    k: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    amp: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    phase: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    drift: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @classmethod
    def wobbly(cls, rng, cx, cy, rx, ry, angle=0.0, strength=0.08, harmonics=(2, 3, 4)):
        k = np.array(harmonics, float)
        return cls(cx, cy, rx, ry, angle, k, rng.uniform(0.3, 1.0, len(k)) * strength / np.sqrt(k),
                   rng.uniform(0, 2 * np.pi, len(k)), rng.uniform(-4, 4, len(k)))

    def scaled(self, s: float, dx: float = 0.0, dy: float = 0.0) -> "Shape":
        return dataclasses.replace(self, cx=self.cx + dx, cy=self.cy + dy, rx=self.rx * s, ry=self.ry * s)


class Canvas:
    """One slice's label map at the internal resolution, painted shape by shape (later shapes on top)."""

    def __init__(self, n: int, body: tuple[float, float, float, float], t: float):
        self.n, self.t = n, t
        self.ox, self.oy, self.bx, self.by = body
        self.axis = (np.arange(n) + 0.5) / n * 2 - 1
        self.labels = np.zeros((n, n), np.uint8)

    def _index(self, lo: float, hi: float) -> slice:
        a = int(np.clip(np.floor((lo + 1) / 2 * self.n - 0.5), 0, self.n))
        b = int(np.clip(np.ceil((hi + 1) / 2 * self.n + 0.5), 0, self.n))
        return slice(a, b)

    def region(self, s: Shape) -> tuple[tuple[slice, slice], np.ndarray]:
        """(row, column) slices of the shape's bounding box and the inside mask within it."""
        if s.rx <= 0 or s.ry <= 0:
            return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
        reach = 1.0 + float(np.sum(s.amp))
        uc, vc = self.ox + s.cx * self.bx, self.oy + s.cy * self.by
        ru, rv = s.rx * self.bx * reach, s.ry * self.by * reach
        r = max(ru, rv)
        rows, cols = self._index(vc - r, vc + r), self._index(uc - r, uc + r)
        du = (self.axis[cols][None, :] - uc) / self.bx
        dv = (self.axis[rows][:, None] - vc) / self.by
        c, sn = np.cos(s.angle), np.sin(s.angle)
        a, b = (c * du + sn * dv) / s.rx, (-sn * du + c * dv) / s.ry
        rho2 = a * a + b * b
        if len(s.k):
            theta = np.arctan2(b, a)
            boundary = 1.0 + np.sum(s.amp[:, None, None] * np.cos(s.k[:, None, None] * theta
                                                                 + (s.phase + s.drift * self.t)[:, None, None]), 0)
            inside = rho2 < boundary * boundary
        else:
            inside = rho2 < 1.0
        return (rows, cols), inside

    def region_mask(self, s: Shape) -> np.ndarray:
        """The shape's full-size mask, painting nothing."""
        box, inside = self.region(s)
        out = np.zeros((self.n, self.n), bool)
        out[box] = inside
        return out

    def paint(self, tissue: str, s: Shape, within: np.ndarray | None = None) -> np.ndarray:
        """Paints the shape (optionally only where `within` is true); returns its full-size mask."""
        box, inside = self.region(s)
        if within is not None:
            inside = inside & within[box]
        self.labels[box][inside] = LABEL[tissue]
        out = np.zeros((self.n, self.n), bool)
        out[box] = inside
        return out

    def paint_mask(self, tissue: str, mask: np.ndarray) -> None:
        self.labels[mask] = LABEL[tissue]


def _bump(t: float, lo: float, hi: float, power: float = 0.5) -> float:
    """0 outside [lo, hi], rising to 1 in the middle: how wide an organ is at height t."""
    if not lo < t < hi:
        return 0.0
    return float(np.sin(np.pi * (t - lo) / (hi - lo)) ** power)


@dataclasses.dataclass
class Tube:
    """A vessel or bowel segment: a straight 3D segment in (x, y, t) with a radius in body units."""
    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius: float
    tissue: str = ""

    def at(self, t: float) -> Shape | None:
        t0, t1 = self.p0[2], self.p1[2]
        if not min(t0, t1) <= t <= max(t0, t1) or t0 == t1:
            return None
        x, y, _ = self.point((t - t0) / (t1 - t0))
        return Shape(x, y, self.radius, self.radius * 1.1)

    def point(self, f: float) -> tuple[float, float, float]:
        """(x, y, t) a fraction f of the way along the axis from p0 to p1."""
        return tuple(a + f * (b - a) for a, b in zip(self.p0, self.p1))

    def sections(self, t: float, height_per_width: float = 0.6) -> list[Shape]:
        """The tube as a solid cylinder cut at height t: circles along the part of its axis within a radius of
        t, so a segment that runs across the body (a flexure) shows as a band, not a single circle.
        `height_per_width`: body units in t units (t = 1 is about 25 cm, a body half-width about 15)."""
        (x0, y0, t0), (x1, y1, t1) = self.p0, self.p1
        reach = self.radius * height_per_width
        if not min(t0, t1) - reach < t < max(t0, t1) + reach:
            return []
        # circles close enough along the axis both across (a flexure) and up (the ascending colon), so a
        # segment shows on every height it spans, not only near its ends
        count = max(2, int(np.ceil(max(np.hypot(x1 - x0, y1 - y0) / (0.4 * self.radius),
                                       abs(t1 - t0) / (0.4 * reach)))) + 1)
        out = []
        for f in np.linspace(0.0, 1.0, count):
            x, y, tf = self.point(f)
            depth = 1 - ((tf - t) / reach) ** 2
            if depth > 0:
                r = self.radius * float(np.sqrt(depth))
                out.append(Shape(x, y, r, r * 1.1))
        return out


@dataclasses.dataclass
class Lesion:
    x: float
    y: float
    t: float
    radius: float        # in-plane, body units
    height: float        # half extent in t
    tissue: str          # lesion_hypo, lesion_hyper or cyst

    def at(self, t: float) -> Shape | None:
        f = 1 - ((t - self.t) / self.height) ** 2
        return Shape(self.x, self.y, self.radius * np.sqrt(f), self.radius * np.sqrt(f)) if f > 0 else None


class Anatomy:
    """The patient-specific organs; `render(t)` paints one slice and returns its labels and organ masks."""

    def __init__(self, rng: np.random.Generator, n: int, arms: bool = False):
        self.n = n
        U = rng.uniform
        # Arms down beside the body take room in the field of view: those bodies fill less of it.
        bx = U(0.55, 0.72) if arms else U(0.68, 0.95)
        by = bx * U(0.64, 0.8)
        shift = min(0.15, 0.99 - bx)
        self.body = (U(-shift, shift), U(-0.12, min(0.05, 0.9 - by)), bx, by)
        self.subcut = U(0.04, 0.16)                # subcutaneous fat thickness (body units)
        self.wall = U(0.07, 0.11)                  # abdominal wall muscle: about 9-16 mm, as beside real livers
        # The lung base is a dome, not a floor: the posterior costophrenic recess reaches two to three vertebrae
        # (4-7 cm) below the dome's top (T11-T12 where the right dome is at T9), so the upper liver's posterior
        # surface lies on the sloping posterior diaphragm with lung behind it. Drawn, with the two
        # below, from a generator of its own, so every other draw of the patient stays as it was.
        extra = rng.spawn(1)[0]
        self.recess = float(extra.uniform(0.16, 0.28))
        # The left lobe's depth front to back varies as much as its reach across: thin in some, in others (a
        # large or hypertrophic left lobe) deep enough to reach back to the stomach's lesser curvature.
        self.left_depth = float(extra.uniform(0.9, 1.7))
        # In front of the liver lie the anterior diaphragm, the rectus and transversus muscles and, higher up, the
        # costal cartilages: 12-25 mm before the first fat on real CT, about twice the flanks' muscle alone.
        self.front = float(extra.uniform(0.04, 0.16))
        self.lo, self.hi = U(0.10, 0.32), U(0.80, 0.90)
        lo, hi = self.lo, self.hi
        span = hi - lo
        self.liver_scale = U(0.88, 1.08)
        self.right_lobe = Shape.wobbly(rng, U(-0.46, -0.38), U(-0.08, 0.06), 0.44, 0.66, U(-0.2, 0.2), 0.07)
        self.left_lobe = Shape.wobbly(rng, 0.0, U(-0.55, -0.42), 0.40, 0.24, U(-0.35, 0.0), 0.10)
        self.left_reach = U(0.55, 1.15)            # how far the left lobe crosses the midline
        # Segment IV (the medial segment) joins the lobes above the hilum: the liver's anterior surface runs
        # unbroken under the diaphragm and the anterior wall from the right lobe across the midline.
        self.medial = Shape.wobbly(rng, U(-0.2, -0.08), U(-0.52, -0.4), U(0.22, 0.3), U(0.2, 0.28),
                                   U(-0.3, 0.1), 0.08)
        self.caudate = Shape.wobbly(rng, -0.08, 0.12, 0.11, 0.12, 0.0, 0.1)
        self.spleen = Shape.wobbly(rng, U(0.56, 0.66), U(0.25, 0.42), U(0.15, 0.2), U(0.24, 0.32), U(-0.7, -0.3), 0.08)
        self.spleen_span = (lo + U(0.25, 0.45) * span, hi - U(0.0, 0.1))
        self.stomach = Shape.wobbly(rng, U(0.22, 0.36), U(-0.25, -0.05), U(0.18, 0.26), U(0.2, 0.3), U(-0.5, 0.3), 0.1)
        self.stomach_span = (lo + U(0.35, 0.55) * span, hi + U(0.0, 0.04))
        self.stomach_air, self.stomach_food = U(0.0, 0.5), rng.uniform() < 0.4
        self.gallbladder = Shape.wobbly(rng, U(-0.32, -0.2), U(-0.35, -0.15), U(0.07, 0.11), U(0.1, 0.15),
                                        U(-0.6, 0.6), 0.06)
        self.gallbladder_span = (lo + U(0.0, 0.1) * span, lo + U(0.3, 0.45) * span) if rng.uniform() < 0.85 else (2, 2)
        kr = U(-0.05, 0.12)
        self.kidney_spans = ((kr, kr + U(0.3, 0.4)), (kr + U(0.02, 0.1), kr + U(0.35, 0.45)))
        self.kidneys = tuple(Shape.wobbly(rng, side * U(0.4, 0.5), U(0.38, 0.5), U(0.11, 0.14), U(0.16, 0.2),
                                          side * U(0.3, 0.6), 0.05) for side in (-1, 1))
        pz = lo + U(0.2, 0.4) * span
        self.pancreas = (Tube((-0.16, 0.02, pz - 0.12), (-0.1, 0.05, pz + 0.05), 0.09),
                         Tube((-0.1, 0.05, pz - 0.02), (0.45, 0.2, pz + 0.14), U(0.05, 0.08)))
        self.spine = (U(-0.03, 0.03), U(0.55, 0.62))
        self.aorta = Shape(U(0.04, 0.12), self.spine[1] - U(0.24, 0.3), 0.055, 0.07)
        self.ivc = Shape(U(-0.2, -0.12), self.spine[1] - U(0.3, 0.38), 0.075, 0.055)
        self.portal = [Tube((0.0, 0.05, lo + 0.35 * span), (-0.25, -0.02, lo + 0.5 * span), 0.045)]
        for _ in range(rng.integers(8, 14)):
            a = (-0.25, -0.02, lo + 0.5 * span)
            self.portal.append(Tube(a, (U(-0.8, 0.15), U(-0.55, 0.4), lo + U(0.2, 0.95) * span), U(0.018, 0.04)))
        top = (self.ivc.cx, self.ivc.cy, lo + 0.92 * span)
        self.hepatic = [Tube(top, (U(-0.85, 0.2), U(-0.6, 0.3), lo + U(0.3, 0.75) * span), U(0.02, 0.045))
                        for _ in range(rng.integers(4, 8))]
        self.lesions = []
        for _ in range(rng.choice([0, 1, 2, 2, 3, 4, 6])):
            r = U(0.025, 0.12)
            self.lesions.append(Lesion(U(-0.65, -0.2), U(-0.35, 0.3), lo + U(0.3, 0.85) * span, r,
                                       r * U(0.6, 1.4) * 0.5, str(rng.choice(["lesion_hypo", "lesion_hypo",
                                                                               "lesion_hyper", "cyst"]))))
        self.bowel = self._bowel(rng)
        self.colon, self.stool_gas = self._colon(rng)
        self.ribs = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(9, 14)))
        self.rib_start = lo + U(0.2, 0.45) * span
        # The heart rests on the central tendon of the diaphragm, below the right dome: on the liver's top
        # slices it lies beside the dome, anterior and to the left, separated only by the diaphragm.
        self.heart = Shape.wobbly(rng, U(0.0, 0.15), U(-0.45, -0.3), U(0.38, 0.46), U(0.3, 0.38), U(-0.4, 0.0), 0.05)
        self.heart_lo = lo + U(0.80, 0.90) * span   # the central tendon lies a few cm below the right dome
        self.heart_hi = self.heart_lo + U(0.4, 0.55)
        self.lung_start = hi - U(0.06, 0.12)
        self.lung_vessels = [Tube((sx * U(0.2, 0.7), U(-0.4, 0.5), self.lung_start + U(-0.05, 0.2)),
                                  (sx * U(0.2, 0.75), U(-0.5, 0.55), U(self.heart_lo, T_TOP + 0.1)), U(0.012, 0.03),
                                  "blood_right_heart") for sx in (-1, 1) for _ in range(rng.integers(6, 11))]
        self.sternum_start = hi - U(0.1, 0.2) * span
        self.pelvis_top = kr - U(0.05, 0.15)      # iliac crest, about the level of the kidneys' lower poles
        self.bladder_top = self.pelvis_top - U(0.3, 0.45)
        self.arms = tuple(self._arm(rng, side) for side in (-1, 1)) if arms else ()

    def _arm(self, rng, side: int) -> Shape:
        """An arm down beside the body (field-of-view units turned into body units); it may leave the FOV."""
        _, _, bx, by = self.body
        r = rng.uniform(0.15, 0.21)
        gap = rng.uniform(0.01, 0.08)
        return Shape.wobbly(rng, side * (1 + (gap + r) / bx), rng.uniform(-0.15, 0.25), r / bx,
                            r * rng.uniform(0.95, 1.25) / by, rng.uniform(-0.3, 0.3), 0.05)

    def _bowel(self, rng) -> list[Tube]:
        """Loops of small bowel below and beside the liver, each with a wall and a content (gas, fluid, chyme or
        collapsed: a collapsed loop is all enhancing wall)."""
        U = rng.uniform
        top = self.lo + 0.6 * (self.hi - self.lo)
        loops = []
        # about 200 segments per unit of height, as in the abdomen: the pelvis is as full of bowel
        for _ in range(int(rng.integers(90, 130) * (top - T_BOTTOM) / 0.55)):
            x, y, t = U(-0.6, 0.6), U(-0.8, 0.35), U(T_BOTTOM, top)
            loops.append(Tube((x, y, t - U(0.06, 0.18)), (x + U(-0.25, 0.25), y + U(-0.25, 0.25), t + U(0.06, 0.18)),
                              U(0.06, 0.13)))
        for tube in loops:
            tube.tissue = str(rng.choice(["gas", "fluid", "bowel_content", "bowel_wall"], p=[0.15, 0.3, 0.25, 0.3]))
        return loops

    def _colon(self, rng) -> tuple[list[Tube], list[Lesion]]:
        """The colon and the gas mottling its faeces. The ascending colon runs up the right flank to the liver's
        inferior surface, where the hepatic flexure turns forward and medially under the right lobe's tip into
        the transverse colon; the descending colon runs down the left flank. The colon is rarely collapsed:
        its content is faeces (soft tissue and fat densities with bubbles of gas), fluid or gas."""
        U = rng.uniform
        span = self.hi - self.lo
        flexure = (U(-0.68, -0.55), U(-0.05, 0.2), self.lo + U(0.0, 0.15) * span)   # under the right lobe's tip
        transverse = (U(-0.4, -0.2), U(-0.7, -0.5), flexure[2] + U(0.03, 0.08))
        radius, rising_y = U(0.1, 0.15), U(-0.1, 0.2)
        turn = radius * U(0.8, 1.0)
        transverse_end = (U(0.2, 0.5), U(-0.7, -0.5), transverse[2] + U(0.05, 0.12))
        transverse_radius = U(0.08, 0.13)
        falling_y, falling_top_y, falling_radius = U(0.0, 0.3), U(0.0, 0.3), U(0.08, 0.12)
        # The ascending and descending colon are fixed to the posterior wall in the paracolic gutters: they lie
        # against the flank muscles from the caecum up, and only at the flexure does the colon turn medially
        # under the liver's tip, so below the liver the right flank holds colon, not fat.
        gutter = (-self._beside_wall(rising_y, radius), rising_y, self.lo - 0.02)
        colon = [Tube((gutter[0], rising_y, T_BOTTOM + 0.3), gutter, radius),
                 Tube(flexure, transverse, turn),
                 Tube(transverse, transverse_end, transverse_radius),
                 Tube((self._beside_wall(falling_y, falling_radius), falling_y, T_BOTTOM + 0.3),
                      (self._beside_wall(falling_top_y, falling_radius), falling_top_y, self.lo + 0.6 * span),
                      falling_radius)]
        bubbles = []
        for tube in colon:
            tube.tissue = str(rng.choice(["bowel_content", "fluid", "gas"], p=[0.7, 0.15, 0.15]))
            bubbles += self._stool_gas(rng, tube)
        # The turn from the gutter to the flexure holds what the ascending colon holds; its bubbles come from a
        # generator of its own, so every other draw of the patient stays as it was.
        rise = Tube(gutter, flexure, radius, colon[0].tissue)
        bubbles += self._stool_gas(rng.spawn(1)[0], rise)
        colon.insert(1, rise)
        return colon, bubbles

    @staticmethod
    def _stool_gas(rng, tube: Tube) -> list[Lesion]:
        """Bubbles of gas mottling faeces along a colon segment (none in fluid or gas)."""
        if tube.tissue != "bowel_content":
            return []
        U = rng.uniform
        bubbles = []
        for _ in range(rng.integers(15, 40)):
            f, a, r = U(0, 1), U(0, 2 * np.pi), U(0.0, 0.55) * tube.radius
            x, y, t = tube.point(f)
            size = U(0.012, 0.035)
            bubbles.append(Lesion(x + r * np.cos(a), y + r * np.sin(a), t, size, size * U(0.5, 1.0), "gas"))
        return bubbles

    def _cavity(self) -> Shape:
        """The abdominal cavity inside the wall muscle (body units), which `render` fills with visceral fat."""
        inner = Shape(0.0, 0.0, 1.0, 1.0).scaled(1 - self.subcut)
        return dataclasses.replace(inner, rx=inner.rx - self.wall, ry=inner.ry - self.wall - 0.02 - self.front / 2,
                                   cy=-0.01 + self.front / 2)

    def _beside_wall(self, y: float, radius: float) -> float:
        """|x| of a tube of `radius` at depth y whose side touches the cavity's edge (`_cavity`, not rotated)."""
        cavity = self._cavity()
        return cavity.rx * float(np.sqrt(max(0.0, 1 - ((y - cavity.cy) / cavity.ry) ** 2))) - radius

    def liver_shapes(self, t: float) -> list[Shape]:
        s = (t - self.lo) / (self.hi - self.lo)
        if not 0 < s < 1:
            return []
        width = min(1.0, (s / 0.3) ** 0.6) * (np.sqrt(max(0.0, 1 - ((s - 0.75) / 0.25) ** 2)) if s > 0.75 else 1.0)
        k = self.liver_scale * width
        lobe = self.right_lobe
        if s < 0.3:   # the inferior tip (segment VI) runs down the lateral wall: narrow across, long front to back
            rx, ry = lobe.rx * k, lobe.ry * self.liver_scale * np.sqrt(width)
            shapes = [dataclasses.replace(lobe, cx=lobe.cx - lobe.rx * self.liver_scale + rx, rx=rx, ry=ry)]
        else:
            shapes = [lobe.scaled(k, 0.1 * (1 - width))]
        left = _bump(s, 0.4, 1.02, 0.7) * self.left_reach * self.liver_scale
        if left > 0:
            lobe = self.left_lobe
            ry = lobe.ry * min(1.0, left + 0.2)
            shapes.append(dataclasses.replace(lobe, cx=lobe.cx - 0.3 + 0.45 * self.left_reach, rx=lobe.rx * left,
                                              # deeper, its front staying under the anterior wall
                                              cy=lobe.cy + (self.left_depth - 1) * ry, ry=ry * self.left_depth))
        medial = _bump(s, 0.35, 1.0, 0.6) * self.liver_scale
        if medial > 0:
            shapes.append(self.medial.scaled(medial))
        caudate = _bump(s, 0.45, 0.85)
        if caudate > 0:
            shapes.append(self.caudate.scaled(caudate))
        return shapes

    def render(self, t: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Labels (uint8, tissues.LABEL) and organ masks (bool) at height t, at the internal resolution."""
        c = Canvas(self.n, self.body, t)
        ox, oy, bx, by = self.body
        body = Shape(0.0, 0.0, 1.0, 1.0)
        for arm in self.arms:
            self._limb(c, arm)
        c.paint("skin", body)
        c.paint("fat", body.scaled(1 - 0.02 / bx))
        inner = body.scaled(1 - self.subcut)
        wall = c.paint("muscle", dataclasses.replace(inner, cy=0.02, ry=inner.ry * 0.98))
        cavity = c.paint("visceral_fat", self._cavity(), within=wall)
        self._spine_and_back(c, t, c.labels != LABEL["air"])
        self._ribs(c, t)
        # Organs are solid and do not overlap: the liver fills the room its neighbours leave, so its visceral
        # surface carries their impressions (renal, colic, gastric) instead of a convex outline cut through them.
        # A neighbour lying mostly inside the liver's outline would be a tunnel through it: the liver displaces
        # that one, as it displaces the mobile small bowel.
        shapes = self.liver_shapes(t)
        outline = np.zeros_like(cavity)
        for shape in shapes:
            outline |= c.region_mask(shape)
        neighbours = np.zeros_like(cavity)

        def beside_liver(organ: np.ndarray) -> np.ndarray:
            return organ if (organ & outline).sum() < 0.5 * organ.sum() else np.zeros_like(organ)
        recess = self._chest(c, t, cavity) if t > self.lung_full - self.recess else np.zeros_like(cavity)
        for tube in self.bowel:
            s = tube.at(t)
            if s is not None:
                wall_mask = c.paint("bowel_wall", s, within=cavity)
                c.paint(tube.tissue, s.scaled(0.7), within=wall_mask)
        sections = self.colon_sections(t)
        wall = np.zeros_like(cavity)
        for _, s in sections:      # all walls first: where segments join, one lumen runs into the next
            section = c.paint("bowel_wall", s, within=cavity)
            wall |= section
            neighbours |= beside_liver(section)
        lumen = np.zeros_like(cavity)
        for tissue, s in sections:  # a thin wall: the content reaches within a few millimetres of the fat
            lumen |= c.paint(tissue, s.scaled(max(0.0, 1 - 0.025 / s.rx)), within=wall)
        for bubble in self.stool_gas:
            s = bubble.at(t)
            if s is not None:
                c.paint("gas", s, within=lumen & (c.labels == LABEL["bowel_content"]))
        self._pelvis(c, t, cavity)
        masks: dict[str, np.ndarray] = {}
        for name, shape, (klo, khi) in zip(("rightkidney", "leftkidney"), self.kidneys, self.kidney_spans):
            k = _bump(t, klo, khi, 0.6)
            if k > 0:
                ks = shape.scaled(k)
                masks[name] = c.paint("kidney_cortex", ks, within=cavity)
                # retroperitoneal and fixed: the kidney and the fat behind it always indent the liver, which
                # never reaches behind a kidney
                neighbours |= cavity & (masks[name] | c.region_mask(dataclasses.replace(ks, cy=ks.cy + ks.ry)))
                c.paint("kidney_medulla", ks.scaled(0.6), within=cavity)
                c.paint("visceral_fat", Shape(ks.cx - np.sign(ks.cx) * ks.rx * 0.5, ks.cy, ks.rx * 0.35, ks.ry * 0.3))
        for tube in self.pancreas:
            s = tube.at(t)
            if s is not None:
                neighbours |= beside_liver(c.paint("pancreas", s, within=cavity))
        sp = _bump(t, *self.spleen_span, 0.6)
        if sp > 0:
            masks["spleen"] = c.paint("spleen", self.spleen.scaled(sp), within=cavity)
            neighbours |= beside_liver(masks["spleen"])
        st = _bump(t, *self.stomach_span, 0.5)
        if st > 0:
            shift = (t - self.stomach_span[0]) / (self.stomach_span[1] - self.stomach_span[0])
            shape = self.stomach.scaled(st, 0.1 * shift, 0.2 * shift)
            wall_mask = c.paint("bowel_wall", shape, within=cavity)
            neighbours |= beside_liver(wall_mask)
            lumen = c.paint("bowel_content" if self.stomach_food else "fluid", shape.scaled(0.85), within=wall_mask)
            level = shape.cy - shape.ry * 0.85 * (1 - 2 * self.stomach_air)
            c.paint_mask("gas", lumen & (c.axis[:, None] < oy + level * by))
        self._heart(c, t, cavity)
        aorta = self.aorta if t > self.pelvis_top else None   # it divides into the iliac arteries at L4
        if aorta is not None:
            neighbours |= beside_liver(c.paint("blood_artery", aorta))
        ivc_in_reach = t < self.heart_lo + 0.04           # the IVC ends in the right atrium
        if ivc_in_reach:
            c.paint("blood_vein", self.ivc)
        liver = np.zeros((self.n, self.n), bool)
        room = cavity & ~neighbours
        if t > self.lo + 0.55 * (self.hi - self.lo):
            for shape in shapes:   # the diaphragm: a thin muscle band over the upper liver
                c.paint("muscle", shape.scaled(1.0 + 0.03 / max(shape.rx, shape.ry)), within=room & ~recess)
        recess &= c.labels == LABEL["lung"]
        if recess.any():   # the liver stops at the posterior diaphragm, the lung of the recess behind it
            behind = ndimage.binary_dilation(recess, iterations=self._pixels(0.03))
            c.paint_mask("muscle", behind & ~recess & outline & room)
            room &= ~behind
        # Muscle lies between bone and liver (the diaphragm and intercostals inside the ribs, the crura in front
        # of the vertebrae): about 3 mm of it keeps the liver off the bone, as on real CT.
        if shapes:
            bone = np.isin(c.labels, BONE)
            beside_bone = ndimage.binary_dilation(bone, iterations=self._pixels(0.02))
            for shape in shapes:
                c.paint("muscle", shape, within=room & beside_bone)
            room &= ~beside_bone
        for shape in shapes:
            liver |= c.paint("liver", shape, within=room)
        if liver.any():
            for tube in self.portal:
                s = tube.at(t)
                if s is not None:
                    c.paint("portal_vein", s, within=liver if tube is not self.portal[0] else cavity)
            for tube in self.hepatic:
                s = tube.at(t)
                if s is not None:
                    c.paint("hepatic_vein", s, within=liver)
            for i, lesion in enumerate(self.lesions):
                s = lesion.at(t)
                if s is not None:
                    masks[f"livertumor{i + 1:02d}"] = c.paint(lesion.tissue, s, within=liver)
            gb = _bump(t, *self.gallbladder_span, 0.6)
            if gb > 0:
                masks["gallbladder"] = c.paint("fluid", self.gallbladder.scaled(gb), within=cavity)
                liver &= ~masks["gallbladder"]
            if ivc_in_reach:
                liver &= ~c.paint("blood_vein", self.ivc)
            for name in masks:
                if name.startswith("livertumor"):
                    masks[name] &= liver
        masks["liver"] = liver
        if "spleen" in masks:
            masks["spleen"] &= ~liver
        self._table(c)
        return c.labels, masks

    def heart_mask(self, t: float) -> np.ndarray:
        """Where the heart (myocardium and chambers) lies at height t, for tests and benches."""
        c = Canvas(self.n, self.body, t)
        scale = _bump(t, self.heart_lo, self.heart_hi, 0.3)
        if scale <= 0:
            return np.zeros((self.n, self.n), bool)
        return c.paint("myocardium", self.heart.scaled(scale))

    def colon_sections(self, t: float) -> list[tuple[str, Shape]]:
        """(content tissue, outer wall shape) of each of the colon's cross-sections at height t."""
        return [(tube.tissue, s) for tube in self.colon for s in tube.sections(t)]

    def colon_mask(self, t: float) -> np.ndarray:
        """Where the colon (wall and content) lies at height t, for tests and benches."""
        c = Canvas(self.n, self.body, t)
        out = np.zeros((self.n, self.n), bool)
        for _, s in self.colon_sections(t):
            out |= c.paint("bowel_wall", s)
        return out

    def _pixels(self, body_units: float) -> int:
        """A distance across (body units) in pixels of the internal canvas, at least one."""
        return max(1, round(body_units * self.body[2] * self.n / 2))

    @property
    def lung_full(self) -> float:
        """Height from which the lungs fill their whole outline."""
        return self.lung_start + 0.08

    def _chest(self, c: Canvas, t: float, cavity: np.ndarray) -> np.ndarray:
        """Lung bases and lungs with their vessels, the heart in its pericardial fat, the mediastinum; returns
        the lung of the posterior recesses, which the liver (painted later) does not cover."""
        grow = min(1.0, max(0.0, (t - self.lung_start) / (self.lung_full - self.lung_start)))
        lungs = np.zeros_like(cavity)
        recess = np.zeros_like(cavity)
        soft = cavity & ~np.isin(c.labels, BONE)
        wall = self._cavity()
        x = (c.axis[None, :] - c.ox) / c.bx / wall.rx
        y = (c.axis[:, None] - c.oy) / c.by
        rho = np.hypot(x, (y - wall.cy) / wall.ry)
        reach = np.clip(((y - wall.cy) / wall.ry / np.maximum(rho, 1e-6) + 0.3) / 1.3, 0.0, 1.0)  # 1 at the back
        floor = self.lung_full - self.recess * reach
        crescent = 0.4 * (t - floor) / self.recess             # the lung's depth from the wall, cavity radii
        behind_wall = 1 - rho < crescent
        for side in (-1, 1):
            if grow > 0:
                lungs |= c.paint("lung", Shape(side * 0.45, 0.12, 0.38 * grow + 0.05, 0.55 * grow + 0.05),
                                 within=cavity)
            # the costophrenic recess: the lung base falls away from the dome's top along the chest wall, deepest
            # at the back, so below the dome a crescent of lung lies between the wall and the liver's posterior
            # surface, thinner the lower it reaches (the diaphragm meets the wall obliquely)
            behind = c.region_mask(Shape(side * 0.45, 0.12, 0.43, 0.6)) & soft & (reach > 0) & behind_wall
            c.paint_mask("lung", behind)
            lungs |= behind
            recess |= behind
        if grow <= 0:
            return recess
        for tube in self.lung_vessels:
            s = tube.at(t)
            if s is not None:
                c.paint(tube.tissue, s, within=lungs)
        if t > self.heart_lo - 0.05:                     # the mediastinum between the lungs
            c.paint("fat", Shape(0.03, -0.25, 0.2, 0.5), within=cavity)
        if t > self.sternum_start:
            front = -1 + self.subcut + 0.04
            c.paint("bone_cortical", Shape(0.0, front, 0.1, 0.045))
            c.paint("bone_trabecular", Shape(0.0, front, 0.07, 0.025))
        sx, sy = self.spine
        c.paint("muscle", Shape(sx + 0.03, sy - 0.3, 0.045, 0.04), within=cavity)           # oesophagus
        c.paint("gas", Shape(sx + 0.03, sy - 0.3, 0.012, 0.01), within=cavity)
        if t > self.heart_hi - 0.12:                     # the great vessels and the airway above the heart
            c.paint("blood_artery", Shape(0.06, -0.32, 0.09, 0.09), within=cavity)           # ascending aorta
            c.paint("blood_vein", Shape(-0.16, -0.3, 0.06, 0.06), within=cavity)             # superior vena cava
            c.paint("blood_right_heart", Shape(0.14, -0.5, 0.09, 0.08), within=cavity)       # pulmonary trunk
            c.paint("gas", Shape(0.0, 0.1, 0.06, 0.055), within=cavity)                      # trachea
        return recess

    def _heart(self, c: Canvas, t: float, cavity: np.ndarray) -> None:
        """Myocardium, right and left heart blood pools, pericardial fat; above the abdominal organs, which
        the diaphragm keeps below it, and under the liver, whose dome it rests on."""
        scale = _bump(t, self.heart_lo, self.heart_hi, 0.3)
        if scale <= 0:
            return
        h = self.heart.scaled(scale)
        c.paint("fat", h.scaled(1.12), within=cavity)
        c.paint("myocardium", h, within=cavity)
        # the chambers fill most of the heart: the ventricular walls are about a centimetre thick
        c.paint("blood_right_heart", dataclasses.replace(h, cx=h.cx - 0.3 * h.rx, cy=h.cy - 0.15 * h.ry,
                                                         rx=0.55 * h.rx, ry=0.65 * h.ry), within=cavity)
        c.paint("blood_artery", dataclasses.replace(h, cx=h.cx + 0.3 * h.rx, cy=h.cy + 0.12 * h.ry,
                                                    rx=0.45 * h.rx, ry=0.55 * h.ry), within=cavity)

    def _pelvis(self, c: Canvas, t: float, cavity: np.ndarray) -> None:
        """Iliac wings below the crest, the acetabula and femoral heads, the bladder filling the low pelvis."""
        if t >= self.pelvis_top:
            return
        depth = self.pelvis_top - t
        wing = min(1.0, depth / 0.12)
        for side in (-1, 1):
            if depth < 0.45:
                ilium = Shape(side * (0.52 - 0.15 * depth), 0.32 + 0.1 * depth, 0.3 * wing, 0.07, -side * 0.55)
                c.paint("bone_cortical", ilium)
                c.paint("bone_trabecular", ilium.scaled(0.6))
            else:
                head = Shape(side * 0.6, 0.05, 0.13, 0.13)
                c.paint("bone_cortical", head)
                c.paint("bone_trabecular", head.scaled(0.75))
        bladder = _bump(t, T_BOTTOM - 0.05, self.bladder_top, 0.6)
        if bladder > 0:
            wall_mask = c.paint("muscle", Shape(0.0, -0.35, 0.3 * bladder, 0.25 * bladder), within=cavity)
            c.paint("urine", Shape(0.0, -0.35, 0.27 * bladder, 0.22 * bladder), within=wall_mask)

    def _limb(self, c: Canvas, arm: Shape) -> None:
        c.paint("skin", arm)
        c.paint("fat", arm.scaled(0.93))
        c.paint("muscle", arm.scaled(0.72, dy=0.05 * arm.ry))
        bone = dataclasses.replace(arm, rx=arm.rx * 0.2, ry=arm.ry * 0.2, k=np.zeros(0))
        c.paint("bone_cortical", bone)
        c.paint("bone_trabecular", bone.scaled(0.55))

    def _spine_and_back(self, c: Canvas, t: float, body: np.ndarray) -> None:
        sx, sy = self.spine
        low = min(1.0, max(0.0, 0.5 - t) * 2)   # psoas and quadratus grow towards the pelvis
        for side in (-1, 1):
            c.paint("muscle", Shape(sx + side * 0.2, sy + 0.26, 0.16, 0.19, side * 0.3), within=body)
            if low > 0:
                c.paint("muscle", Shape(sx + side * (0.13 + 0.05 * low), sy - 0.02, 0.05 + 0.07 * low,
                                        0.07 + 0.06 * low))
                c.paint("muscle", Shape(sx + side * 0.38, sy + 0.15, 0.04 + 0.08 * low, 0.06 + 0.05 * low, side * 0.5))
        c.paint("bone_cortical", Shape(sx, sy, 0.125, 0.15))
        c.paint("bone_trabecular", Shape(sx, sy, 0.105, 0.125))
        c.paint("bone_cortical", Shape(sx, sy + 0.25, 0.075, 0.09))
        for side in (-1, 1):
            c.paint("bone_cortical", Shape(sx + side * 0.12, sy + 0.22, 0.07, 0.025, side * 0.4))
        c.paint("bone_cortical", Shape(sx, sy + 0.38, 0.025, 0.08))
        c.paint("csf", Shape(sx, sy + 0.24, 0.05, 0.06))

    def _ribs(self, c: Canvas, t: float) -> None:
        if t < self.rib_start:
            return
        inner = 1 - self.subcut - self.wall * 0.5
        for a in self.ribs:
            # The ribs and costal cartilages keep their place against the cavity (`_cavity`), whose front the
            # anterior wall's extra thickness pushes back: under the costal margin only the diaphragm and transversus
            # thoracis lie between cartilage and liver, the rectus lies in front of the cartilages.
            x, y = inner * np.cos(a), inner * np.sin(a) * 0.97 + self.front / 2 * (1 - np.sin(a))
            if y > 0.75 or abs(x) < 0.25 and y < 0:
                continue
            rib = Shape(x, y, 0.045, 0.03, a + np.pi / 2)
            c.paint("bone_cortical", rib)
            c.paint("bone_trabecular", rib.scaled(0.55))

    def _table(self, c: Canvas) -> None:
        """The patient table: a thin curved shell below the back, in air."""
        ox, oy, bx, by = self.body
        top = oy + by + 0.03
        u, v = c.axis[None, :], c.axis[:, None]
        curve = top + 0.12 * ((u - ox) / 0.95) ** 2
        shell = (np.abs(v - curve) < 0.012) & (np.abs(u - ox) < 0.95) & (c.labels == 0)
        c.labels[shell] = LABEL["table"]
