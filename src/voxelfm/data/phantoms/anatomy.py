"""Normal chest/upper-abdomen anatomy of one phantom patient, as analytic shapes in LPS mm.

The patient frame is relative: x to the patient's left, y posterior, z superior, origin on the
body axis at the height of the right hemidiaphragm dome. :class:`Anatomy` holds every shape
parameter drawn for one patient (so two scans of a patient share their anatomy) plus the
placement of the patient in the scanner (``offset``), and :func:`render_anatomy` paints it on a
:class:`~voxelfm.data.phantoms.canvas.Canvas`. All lengths scale with the patient size ``s``.

Intensities (HU, unenhanced): air −1000, lung ≈ −860 with a dependent (posterior) gradient,
fat ≈ −100, muscle ≈ 45, blood ≈ 40, liver ≈ 58, spleen ≈ 48, kidney ≈ 32, cortical bone
≈ 700–1000, cancellous bone ≈ 120–250 (falls with age), disc ≈ 80. With contrast (arterial or
portal-venous phase) blood and enhancing organs rise accordingly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from voxelfm.data.phantoms import labels as L
from voxelfm.data.phantoms.canvas import (
    Canvas,
    RandomField,
    capsule_bbox,
    ellipsoid_bbox,
    sdf_capsule,
    sdf_cone,
    sdf_ellipsoid,
    smoothstep,
)

__all__ = ["Patient", "Anatomy", "draw_patient", "render_anatomy", "rotation"]


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rows = local axes in LPS: rotate about z (yaw), then y (pitch), then x (roll); radians."""
    cz, sz = math.cos(yaw), math.sin(yaw)
    cy, sy = math.cos(pitch), math.sin(pitch)
    cx, sx = math.cos(roll), math.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return (rz @ ry @ rx).T


@dataclass
class Patient:
    """Patient-level draws shared by all scans of one patient.

    Attributes:
        age: years at the first scan.
        sex: ``"M"`` or ``"F"``.
        size: body scale factor (1.0 ≈ 170 cm adult); all anatomy scales with it.
        fat_mm: subcutaneous fat thickness at the chest (mm).
        smoker: pack-year–like exposure in [0, 1] (raises emphysema, nodule and calcification risk).
        anatomy_seed: seed of the patient's anatomical detail (vessel trees, jitter).
    """

    age: float
    sex: str
    size: float
    fat_mm: float
    smoker: float
    anatomy_seed: int


def draw_patient(rng: np.random.Generator) -> Patient:
    sex = "M" if rng.random() < 0.5 else "F"
    age = float(np.clip(rng.normal(63, 11), 35, 90))
    size = float(np.clip(rng.normal(1.04 if sex == "M" else 0.95, 0.06), 0.8, 1.2))
    fat = float(np.clip(rng.lognormal(math.log(16 if sex == "M" else 20), 0.45), 4, 60))
    smoker = float(np.clip(rng.beta(0.8, 1.6) if rng.random() < 0.55 else 0.0, 0, 1))
    return Patient(age=age, sex=sex, size=size, fat_mm=fat, smoker=smoker, anatomy_seed=int(rng.integers(0, 2**31 - 1)))


@dataclass
class Tree:
    """A branching tube tree: segments ``(a, b, ra, rb, depth)`` in LPS mm."""

    segments: list[tuple[np.ndarray, np.ndarray, float, float, int]] = field(default_factory=list)


class Anatomy:
    """Shape parameters of one patient placed in the scanner.

    Args:
        patient: the patient draws.
        offset: LPS mm of the patient-frame origin (body axis at the right dome height).
        cardiac_scale: heart size factor (1 normal; ≥ 1.25 cardiomegaly).
        contrast: ``"none"``, ``"arterial"`` or ``"venous"``.
    """

    def __init__(
        self,
        patient: Patient,
        offset: tuple[float, float, float],
        *,
        cardiac_scale: float = 1.0,
        contrast: str = "none",
    ) -> None:
        self.patient = patient
        self.offset = np.asarray(offset, dtype=np.float64)
        self.s = s = patient.size
        self.cardiac_scale = cardiac_scale
        self.contrast = contrast
        rng = np.random.default_rng(patient.anatomy_seed)
        self._rng = rng
        j = lambda sd=0.05: float(1.0 + rng.normal(0, sd))  # noqa: E731 — small anatomical jitter
        self.fat = patient.fat_mm
        self.a0 = 140 * s * j(0.04)  # half-width of the trunk without fat
        self.b_ant0 = 98 * s * j(0.05)
        self.b_post0 = 92 * s * j(0.04)
        self.phase = float(rng.uniform(0, 2 * math.pi))
        self.muscle = 10 * s * j(0.15)
        self.apex = 235 * s * j(0.05)  # lung apex height above the right dome
        self.z_top_body = self.apex + 120 * s
        self.carina = 150 * s * j(0.04)
        self.y_vb = 22 * s * j(0.1)  # vertebral body centre (posterior of axis)
        self.dome_r = (-55 * s, -5 * s, 0.0)
        self.dome_l = (62 * s, 0.0, -16 * s * j(0.2))
        self.dome_depth = 62 * s * j(0.08)
        self.mediast_x = 5 * s
        self.rib_r = 5.2 * s
        bone_q = float(np.clip(1.25 - 0.008 * (patient.age - 40) - (0.1 if patient.sex == "F" else 0), 0.55, 1.3))
        self.cancellous_hu = 190 * bone_q
        self.cortical_hu = float(rng.uniform(700, 950)) * (0.85 + 0.15 * bone_q)
        self.hu = {
            "fat": float(rng.normal(-102, 6)),
            "muscle": float(rng.normal(46, 4)),
            "skin": 30.0,
            "lung": float(rng.normal(-862, 12)),
            "liver": float(rng.normal(58, 5)),
            "spleen": float(rng.normal(47, 3)),
            "kidney": float(rng.normal(32, 3)),
        }
        self.tracheal_air = True

    # -- frame helpers --------------------------------------------------------------------------
    def p(self, x: float, y: float, z: float) -> np.ndarray:
        """Patient-frame mm → LPS mm."""
        return self.offset + np.array([x, y, z], dtype=np.float64)

    def rel(self, X, Y, Z):
        return X - np.float32(self.offset[0]), Y - np.float32(self.offset[1]), Z - np.float32(self.offset[2])

    # -- profiles along z (patient frame) ---------------------------------------------------------
    def abd(self, Z):
        return smoothstep(-20.0, -160.0 * self.s, Z)

    def fat_t(self, Z):
        return self.fat * (0.8 + 0.6 * self.abd(Z))

    def body_axes(self, Z):
        """Semi-axes (lateral, anterior, posterior) of the outer skin surface at height Z."""
        s = self.s
        wav = 1.0 + 0.035 * np.sin(Z / (85.0 * s) + self.phase)
        taper = 1.0 - 0.16 * smoothstep(self.apex - 40 * s, self.z_top_body, Z)
        ft = self.fat_t(Z)
        a = self.a0 * wav * taper + ft + 2
        b_ant = (
            self.b_ant0 * (1.0 - 0.12 * smoothstep(self.apex - 60 * s, self.z_top_body, Z))
            + ft * (1.0 + 0.5 * self.abd(Z))
            + 2
        )
        b_post = self.b_post0 + 0.55 * ft + 2
        return a, b_ant, b_post

    def cavity_axes(self, Z):
        """Semi-axes of the thoracic/abdominal cavity (inner surface of the body wall)."""
        a, b_ant, b_post = self.body_axes(Z)
        ft = self.fat_t(Z)
        wall = self.muscle + 2 * self.rib_r + 2
        taper = 1.0 - 0.25 * smoothstep(self.apex - 80 * self.s, self.z_top_body, Z)
        ac = (a - 2 - ft - wall) * taper
        bac = b_ant - 2 - ft * (1.0 + 0.5 * self.abd(Z)) - wall
        bpc = np.minimum(self.y_vb + 36 * self.s, b_post - 2 - 0.55 * ft - wall)
        return ac, bac, bpc + 0 * Z

    def spine_y(self, Z):
        """Vertebral body centre y at height Z (thoracic kyphosis, lumbar lordosis)."""
        s = self.s
        return (
            self.y_vb
            + 9 * s * np.sin(np.clip((Z + 60 * s) / (330 * s), 0, 1) * math.pi)
            - 6 * s * smoothstep(-60 * s, -220 * s, Z)
        )

    def dome(self, X, Y, side: str):
        cx, cy, cz = self.dome_r if side == "R" else self.dome_l
        s = self.s
        q = ((X - cx) / (88 * s)) ** 2 + ((Y - cy) / (92 * s)) ** 2
        return cz - self.dome_depth * q

    def diaphragm(self, X, Y):
        return np.maximum(self.dome(X, Y, "R"), self.dome(X, Y, "L"))

    # -- SDFs (take LPS arrays) -----------------------------------------------------------------
    @staticmethod
    def _ellipse_sdf(X, Y, a, b_ant, b_post):
        """Approximate distance (mm) to an ellipse with different anterior/posterior semi-axes.
        ``a``, ``b_*`` depend on z only, so the axis terms are formed on thin arrays first."""
        ia2 = np.float32(1.0) / (np.asarray(a, dtype=np.float32) ** 2)
        ib2 = np.where(
            Y < 0,
            np.float32(1.0) / np.asarray(b_ant, dtype=np.float32) ** 2,
            np.float32(1.0) / np.asarray(b_post, dtype=np.float32) ** 2,
        )
        x2 = X * X
        y2 = Y * Y
        k0 = np.sqrt(x2 * ia2 + y2 * ib2)
        k1 = np.sqrt(x2 * (ia2 * ia2) + y2 * (ib2 * ib2))
        k0 *= k0 - 1.0
        k0 /= np.maximum(k1, 1e-6)
        return k0

    def body_sdf(self, X, Y, Z):
        X, Y, Z = self.rel(X, Y, Z)
        a, ba, bp = self.body_axes(Z)
        return self._ellipse_sdf(X, Y, a, ba, bp)

    def cavity_sdf(self, X, Y, Z):
        X, Y, Z = self.rel(X, Y, Z)
        a, ba, bp = self.cavity_axes(Z)
        top = Z - (self.apex + 30 * self.s)
        return np.maximum(self._ellipse_sdf(X, Y, a, ba, bp), top)

    def lung_sdf(self, side: str):
        s = self.s
        sign = -1.0 if side == "R" else 1.0
        cap = sdf_ellipsoid((sign * 72 * s, 2 * s, 40 * s), (105 * s, 125 * s, self.apex - 40 * s))

        def f(X, Y, Z):
            Xr, Yr, Zr = self.rel(X, Y, Z)
            a, ba, bp = self.cavity_axes(Zr)
            d = self._ellipse_sdf(Xr, Yr, a - 3, ba - 3, bp - 3)
            d = np.maximum(d, self.dome(Xr, Yr, side) - Zr)
            ant = smoothstep(self.y_vb + 10 * s, self.y_vb - 70 * s, Yr)
            post = smoothstep(self.y_vb, self.y_vb + 30 * s, Yr)  # paravertebral: beside the spine
            hw = 11 * s + 9 * s * ant + 13 * s * post
            medial = sign * (self.mediast_x - Xr) + hw if side == "L" else (Xr - self.mediast_x) + hw
            d = np.maximum(d, medial)
            return np.maximum(d, cap(Xr, Yr, Zr))

        return f

    def lung_bbox(self, side: str):
        s = self.s
        lo_x, hi_x = (-200 * s, self.mediast_x) if side == "R" else (self.mediast_x, 200 * s)
        lo = self.p(lo_x, -140 * s, self.dome_r[2] - self.dome_depth - 10)
        hi = self.p(hi_x, 140 * s, self.apex + 2)
        return ((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]))

    # -- heart ----------------------------------------------------------------------------------
    def heart_geometry(self):
        s, c = self.s, self.cardiac_scale
        rot = rotation(yaw=math.radians(-40), pitch=math.radians(30))
        radii = np.array([62, 47, 42]) * s * c
        # the heart rests on the diaphragm: push the centre up when it grows
        center = self.p(20 * s + 10 * s * (c - 1), -30 * s - 8 * s * (c - 1), 12 * s + 25 * s * (c - 1))
        return center, radii, rot


def _sample_inside(rng, sdf, bbox, n, margin):
    lo = np.array([b[0] for b in bbox])
    hi = np.array([b[1] for b in bbox])
    pts = []
    for _ in range(40):
        cand = rng.uniform(lo, hi, size=(n * 4, 3)).astype(np.float32)
        d = sdf(cand[:, 0], cand[:, 1], cand[:, 2])
        pts.extend(cand[d < -margin])
        if len(pts) >= n:
            break
    return np.asarray(pts[:n], dtype=np.float64)


def build_tree(rng, root, points, r_root, max_depth, min_radius, murray=2.7) -> Tree:
    """Space-filling branching tree: each branch heads for the centroid of its share of
    ``points``, which is split in two along its principal axis at every bifurcation."""
    tree = Tree()
    n_total = len(points)

    def grow(start, pts, depth):
        if len(pts) == 0:
            return
        r = r_root * (len(pts) / n_total) ** (1.0 / murray)
        if r < min_radius or depth > max_depth:
            return
        c = pts.mean(axis=0)
        if len(pts) == 1:
            end = c
        else:
            frac = 0.55 + 0.15 * rng.random()
            end = start + frac * (c - start)
        if np.linalg.norm(end - start) > 0.5:
            r_end = r * 0.92
            tree.segments.append((start.copy(), end.copy(), r, r_end, depth))
        if len(pts) == 1:
            return
        proj = pts[:, int(np.argmax(pts.var(axis=0)))]  # split across the widest spread
        med = float(np.median(proj))
        grow(end, pts[proj <= med], depth + 1)
        grow(end, pts[proj > med], depth + 1)

    grow(np.asarray(root, dtype=np.float64), points, 0)
    return tree


def _polyline(canvas, pts, radius, value, label, **kw):
    for a, b in zip(pts[:-1], pts[1:]):
        ra, rb = (radius, radius) if np.isscalar(radius) else radius
        canvas.paint(sdf_cone(a, b, ra, rb), capsule_bbox(a, b, max(ra, rb)), value, label, **kw)


def _blood_hu(contrast: str, rng) -> tuple[float, float]:
    """(arterial, venous/right-heart) blood HU for the contrast phase."""
    if contrast == "arterial":
        return float(rng.uniform(280, 380)), float(rng.uniform(120, 220))
    if contrast == "venous":
        return float(rng.uniform(150, 190)), float(rng.uniform(140, 180))
    return float(rng.uniform(35, 48)), float(rng.uniform(35, 48))


class Landmarks(dict):
    """Geometry handed from the anatomy to the findings (aorta path, heart, hila, trees, ...)."""


def render_anatomy(
    canvas: Canvas, an: Anatomy, *, pericardial_fluid_mm: float = 0.0, scan_rng: np.random.Generator, after_lungs=None
) -> Landmarks:
    """Paint the normal anatomy of ``an`` on ``canvas``; returns landmarks for the findings."""
    s = an.s
    rng = np.random.default_rng(an.patient.anatomy_seed + 1)
    lm = Landmarks()
    g = canvas.grid
    vox = min(g.spacing[1:])
    art_hu, ven_hu = _blood_hu(an.contrast, scan_rng)
    lm["blood_hu"] = (art_hu, ven_hu)

    # ---- body wall: skin, subcutaneous fat, muscle, then the cavity ---------------------------
    _paint_body(canvas, an, rng)

    # ---- table ----------------------------------------------------------------------------------
    y_t = an.offset[1] + an.body_axes(0.0)[2] + 1.0

    def table_sdf(X, Y, Z, thick=22.0, y_top=y_t):
        ymid = y_top + thick / 2 - 0.0006 * X**2
        return np.maximum(np.abs(Y - ymid) - thick / 2, np.abs(X) - 230.0) + 0 * Z

    body_labels = (L.SKIN, L.SUBCUTANEOUS_FAT, L.MUSCLE, L.INTERNAL_SOFT_TISSUE)
    canvas.paint(table_sdf, ((-240, 240), (y_t - 40, y_t + 30), (-1e5, 1e5)), -880.0, L.TABLE, outside=body_labels)
    for yy in (y_t, y_t + 20.0):
        canvas.paint(
            lambda X, Y, Z, yy=yy: table_sdf(X, Y, Z, 2.5, yy),
            ((-240, 240), (y_t - 40, y_t + 30), (-1e5, 1e5)),
            220.0,
            L.TABLE,
            outside=body_labels,
        )

    # ---- lungs ------------------------------------------------------------------------------------
    lung_field = RandomField(
        rng, an.lung_bbox("R") if False else _union_bbox(an.lung_bbox("R"), an.lung_bbox("L")), 9.0
    )
    lung_hu = an.hu["lung"]
    yc = an.offset[1]

    def lung_value(X, Y, Z):
        dep = np.clip((Y - yc) / (110 * s), -1, 1)  # posterior = dependent = denser
        return lung_hu + 32.0 * dep + 9.0 * lung_field(X, Y, Z)

    for side, lab in (("R", L.LUNG_RIGHT), ("L", L.LUNG_LEFT)):
        canvas.paint(an.lung_sdf(side), an.lung_bbox(side), lung_value, lab, within=(L.INTERNAL_SOFT_TISSUE,))
    lm["lung_field"] = lung_field
    if after_lungs is not None:  # parenchymal findings go under the vessels
        after_lungs(canvas)

    # ---- diaphragm muscle under the lungs -------------------------------------------------------
    def diaphragm_sdf(X, Y, Z):
        Xr, Yr, Zr = an.rel(X, Y, Z)
        return np.maximum(np.abs(Zr - (an.diaphragm(Xr, Yr) - 3.0)) - 3.0, an.cavity_sdf(X, Y, Z))

    lo = an.p(-250 * s, -200 * s, an.dome_l[2] - an.dome_depth * 2.2 - 10)
    hi = an.p(250 * s, 200 * s, 8)
    canvas.paint(diaphragm_sdf, _bb(lo, hi), an.hu["muscle"], L.MUSCLE, within=(L.INTERNAL_SOFT_TISSUE,))

    inside_abd = (L.INTERNAL_SOFT_TISSUE,)

    def below_diaphragm(sdf, gap=6.0):
        def f(X, Y, Z):
            Xr, Yr, Zr = an.rel(X, Y, Z)
            return np.maximum(np.maximum(sdf(X, Y, Z), Zr - (an.diaphragm(Xr, Yr) - gap)), an.cavity_sdf(X, Y, Z) + 1.0)

        return f

    enh = {"none": 0.0, "arterial": 0.35, "venous": 1.0}[an.contrast]
    # ---- liver --------------------------------------------------------------------------------------
    liv_main = sdf_ellipsoid(an.p(-58 * s, 8 * s, -62 * s), (92 * s, 88 * s, 88 * s), rotation(yaw=0.2))
    liv_left = sdf_ellipsoid(an.p(12 * s, -42 * s, -38 * s), (68 * s, 36 * s, 42 * s), rotation(yaw=-0.25))
    liver = below_diaphragm(lambda X, Y, Z: np.minimum(liv_main(X, Y, Z), liv_left(X, Y, Z)), 5.0)
    liver_hu = an.hu["liver"] + enh * float(rng.uniform(45, 60))
    liver_field = RandomField(rng, _bb(an.p(-170 * s, -120 * s, -170 * s), an.p(90 * s, 110 * s, 20)), 14.0)
    canvas.paint(
        liver,
        _bb(an.p(-170 * s, -100 * s, -160 * s), an.p(85 * s, 100 * s, 10)),
        lambda X, Y, Z: liver_hu + 4.0 * liver_field(X, Y, Z),
        L.LIVER,
        within=inside_abd,
    )
    # hepatic / portal veins: darker unenhanced, brighter with contrast
    hv_hu = liver_hu - 15 if an.contrast == "none" else ven_hu + 10
    for ang in (-0.5, 0.1, 0.7):
        a = an.p(-10 * s, 15 * s, -25 * s)
        b = an.p(-10 * s - 75 * s * math.cos(ang), 15 * s - 75 * s * math.sin(ang) * 0.6, -40 * s)
        canvas.paint(sdf_cone(a, b, 5.5 * s, 2.5 * s), capsule_bbox(a, b, 6 * s), hv_hu, None, within=(L.LIVER,))

    # ---- spleen -------------------------------------------------------------------------------------
    spl = below_diaphragm(
        sdf_ellipsoid(an.p(86 * s, 48 * s, -52 * s), (26 * s, 56 * s, 48 * s), rotation(yaw=0.6)), 5.0
    )
    canvas.paint(
        spl,
        _bb(an.p(30 * s, -30 * s, -120 * s), an.p(150 * s, 120 * s, 10)),
        an.hu["spleen"] + enh * float(rng.uniform(60, 80)),
        L.SPLEEN,
        within=inside_abd,
    )

    # ---- stomach (wall, fluid, gas anteriorly) ------------------------------------------------------
    st_c = an.p(48 * s, -18 * s, -62 * s)
    st_r = (44 * s, 36 * s, 52 * s)
    st_rot = rotation(yaw=-0.3, roll=0.2)
    stomach = below_diaphragm(sdf_ellipsoid(st_c, st_r, st_rot), 6.0)
    st_bb = ellipsoid_bbox(st_c, st_r, st_rot)
    canvas.paint(stomach, st_bb, 42.0 + 40 * enh, L.STOMACH, within=inside_abd)
    gas_level = st_c[1] - float(rng.uniform(0.0, 0.5)) * st_r[1]
    content = lambda X, Y, Z: np.where(Y < gas_level, -1000.0, 12.0).astype(np.float32)  # noqa: E731
    canvas.paint(lambda X, Y, Z: stomach(X, Y, Z) + 4.0, st_bb, content, L.STOMACH, within=(L.STOMACH,))
    lm["stomach"] = (st_c, st_r, st_rot)

    # ---- kidneys ------------------------------------------------------------------------------------
    for sign, lab, dz in ((-1, L.KIDNEY_RIGHT, -12), (1, L.KIDNEY_LEFT, 0)):
        kc = an.p(sign * 72 * s, 50 * s, (-168 + dz) * s)
        kr = (28 * s, 26 * s, 55 * s)
        krot = rotation(yaw=sign * 0.45, roll=0.15 * sign)
        ksdf = sdf_ellipsoid(kc, kr, krot)
        notch = sdf_ellipsoid(kc + np.array([-sign * 24 * s, -8 * s, 0]), (12 * s, 11 * s, 22 * s))
        kidney = lambda X, Y, Z, k=ksdf, n=notch: np.maximum(k(X, Y, Z), -n(X, Y, Z))  # noqa: E731
        kb = ellipsoid_bbox(kc, kr, krot)
        if an.contrast == "arterial":
            canvas.paint(kidney, kb, float(rng.uniform(170, 220)), lab, within=inside_abd)
            canvas.paint(
                lambda X, Y, Z, k=kidney: k(X, Y, Z) + 6 * s, kb, float(rng.uniform(60, 90)), lab, within=(lab,)
            )
        else:
            canvas.paint(kidney, kb, an.hu["kidney"] + enh * float(rng.uniform(110, 140)), lab, within=inside_abd)
        canvas.paint(
            sdf_ellipsoid(kc + np.array([-sign * 10 * s, -4 * s, 0]), (7 * s, 6 * s, 16 * s)),
            kb,
            -60.0,
            None,
            within=(lab,),
        )  # renal sinus fat

    # ---- mediastinum: esophagus, airways, great vessels, heart ------------------------------------
    med_within = (L.INTERNAL_SOFT_TISSUE, L.LUNG_RIGHT, L.LUNG_LEFT, L.MUSCLE)
    top = an.z_top_body + 50
    y_tr = an.y_vb - 44 * s
    y_es = an.y_vb - 27 * s
    eso = [
        an.p(-2 * s, y_es, top),
        an.p(2 * s, y_es, an.carina),
        an.p(10 * s, y_es - 2 * s, 60 * s),
        an.p(24 * s, y_es - 8 * s, 5 * s),
        an.p(34 * s, -8 * s, -22 * s),
        st_c + np.array([-20 * s, 0, 25 * s]),
    ]
    lm["esophagus"] = eso
    _polyline(canvas, eso, 8.0 * s, 40.0, L.ESOPHAGUS, within=med_within)

    # aorta
    ao = [
        an.p(2 * s, -14 * s, 42 * s),
        an.p(-2 * s, -20 * s, 100 * s),
        an.p(0, -16 * s, 150 * s),
        an.p(10 * s, -4 * s, 176 * s),
        an.p(22 * s, 14 * s, 180 * s),
        an.p(27 * s, an.y_vb - 10 * s, 160 * s),
        an.p(26 * s, an.y_vb - 14 * s, 100 * s),
        an.p(20 * s, an.y_vb - 22 * s, 0),
        an.p(12 * s, an.y_vb - 27 * s, -120 * s),
        an.p(6 * s, an.y_vb - 30 * s, -420 * s),
    ]
    ao_r = [15.5 * s, 15 * s, 14 * s, 13 * s, 12.5 * s, 12 * s, 11.5 * s, 11 * s, 10 * s, 9 * s]
    for i in range(len(ao) - 1):
        canvas.paint(
            sdf_cone(ao[i], ao[i + 1], ao_r[i], ao_r[i + 1]),
            capsule_bbox(ao[i], ao[i + 1], ao_r[i]),
            art_hu,
            L.AORTA,
            within=med_within + (L.ESOPHAGUS, L.LIVER),
        )
    lm["aorta"] = (ao, ao_r)

    # pulmonary trunk and arteries
    hil_r, hil_l = an.p(-56 * s, 6 * s, 122 * s), an.p(58 * s, 10 * s, 128 * s)
    pa = [an.p(-4 * s, -42 * s, 40 * s), an.p(8 * s, -28 * s, 112 * s)]
    pa_hu = ven_hu if an.contrast != "venous" else art_hu
    _polyline(canvas, pa, (14 * s, 13 * s), pa_hu, L.PULMONARY_ARTERY, within=med_within)
    for hil, mid in ((hil_r, an.p(-22 * s, -6 * s, 122 * s)), (hil_l, an.p(36 * s, 2 * s, 130 * s))):
        _polyline(canvas, [pa[-1], mid, hil], (10 * s, 8 * s), pa_hu, L.PULMONARY_ARTERY, within=med_within)
    lm["hila"] = (hil_r, hil_l)

    # trachea and main bronchi (wall then air)
    trachea = [an.p(0, y_tr, top), an.p(0, y_tr, an.carina)]
    bro_r, bro_l = an.p(-46 * s, y_tr + 30 * s, an.carina - 24 * s), an.p(50 * s, y_tr + 34 * s, an.carina - 34 * s)
    wall = 2.2 * s
    for pts, r in ((trachea, 9.5 * s), ([trachea[1], bro_r], 7 * s), ([trachea[1], bro_l], 6.5 * s)):
        _polyline(canvas, pts, r + wall, 35.0, L.AIRWAY, within=med_within + (L.ESOPHAGUS,))
    for pts, r in ((trachea, 9.5 * s), ([trachea[1], bro_r], 7 * s), ([trachea[1], bro_l], 6.5 * s)):
        _polyline(canvas, pts, r, -1000.0, L.AIRWAY, within=(L.AIRWAY,))
    lm["carina"] = trachea[1]

    # heart with pericardium, (effusion), epicardial fat, myocardium, chambers
    hc, hr, hrot = an.heart_geometry()
    lm["heart"] = (hc, hr, hrot)

    def heart_layer(extra):
        e = sdf_ellipsoid(hc, hr + extra, hrot)

        back = an.y_vb - 36 * s + extra  # the heart stays anterior to the oesophagus and aorta

        def f(X, Y, Z):
            Xr, Yr, Zr = an.rel(X, Y, Z)
            return np.maximum(np.maximum(e(X, Y, Z), an.diaphragm(Xr, Yr) + 1.0 - Zr), Yr - back)

        return f, ellipsoid_bbox(hc, hr + extra, hrot)

    fat_t, peri_t = 3.5, 1.6
    f, bb = heart_layer(fat_t + pericardial_fluid_mm + peri_t)
    canvas.paint(f, bb, 35.0, L.INTERNAL_SOFT_TISSUE, within=med_within)  # pericardium
    fluid_hu = float(scan_rng.uniform(5, 18))
    if pericardial_fluid_mm > 0:
        f, bb = heart_layer(fat_t + pericardial_fluid_mm)
        canvas.paint(f, bb, fluid_hu, L.PERICARDIAL_EFFUSION, within=(L.INTERNAL_SOFT_TISSUE,))
    f, bb = heart_layer(fat_t)
    canvas.paint(
        f, bb, an.hu["fat"] + 10, L.INTERNAL_SOFT_TISSUE, within=(L.INTERNAL_SOFT_TISSUE, L.PERICARDIAL_EFFUSION)
    )
    f, bb = heart_layer(0.0)
    myo_hu = 45.0 + enh * 60 + (40.0 if an.contrast == "arterial" else 0.0)
    canvas.paint(f, bb, myo_hu, L.HEART, within=(L.INTERNAL_SOFT_TISSUE, L.PULMONARY_ARTERY, L.PERICARDIAL_EFFUSION))
    c = an.cardiac_scale
    u = hrot  # rows: long axis, short axes
    chambers = (  # (offset along local axes as fraction of radii, radii fraction, arterial side?)
        ((0.18, 0.18, 0.05), (0.62, 0.5, 0.5), True),  # left ventricle
        ((0.05, -0.45, -0.05), (0.6, 0.38, 0.55), False),  # right ventricle
        ((-0.55, 0.35, 0.25), (0.42, 0.42, 0.42), True),  # left atrium
        ((-0.45, -0.3, 0.45), (0.4, 0.4, 0.4), False),  # right atrium
    )
    for off, rad, arterial in chambers:
        cc = hc + (np.asarray(off) * hr) @ u
        canvas.paint(
            sdf_ellipsoid(cc, np.asarray(rad) * hr * (1 + 0.1 * (c - 1)), hrot),
            ellipsoid_bbox(cc, np.asarray(rad) * hr, hrot),
            art_hu if arterial else ven_hu,
            None,
            within=(L.HEART,),
        )
    # coronary arteries: rings in the atrioventricular groove and the interventricular groove
    cor = []
    for frac_long, n in ((-0.25, 10),):
        for k in range(n):
            t = 2 * math.pi * k / n
            loc = np.array([frac_long * hr[0], (hr[1] + 1.0) * math.cos(t) * 0.97, (hr[2] + 1.0) * math.sin(t) * 0.97])
            cor.append(hc + loc @ u)
    lad = [
        hc + np.array([x * hr[0], -0.2 * hr[1], -(hr[2] + 1.0) * math.sqrt(max(0.0, 1 - x * x)) * 0.98]) @ u
        for x in np.linspace(-0.4, 0.8, 6)
    ]
    # keep the points on the part of the heart that exists (anterior to its posterior clip plane)
    back = an.offset[1] + an.y_vb - 36 * s - 2.0
    cor = [q for q in cor if q[1] < back] or cor[:1]
    lad = [q for q in lad if q[1] < back] or lad[:1]
    lm["coronary"] = (cor, lad)
    cor_hu = art_hu if an.contrast != "none" else 40.0
    for pts in (cor + cor[:1], lad):
        _polyline(canvas, pts, 1.6 * s, cor_hu, None, within=(L.INTERNAL_SOFT_TISSUE,))

    # ---- normal mediastinal lymph nodes -------------------------------------------------------------
    stations = {
        "right paratracheal": an.p(-15 * s, y_tr - 4 * s, an.carina + 18 * s),
        "left paratracheal": an.p(14 * s, y_tr - 2 * s, an.carina + 14 * s),
        "subcarinal": an.p(2 * s, y_tr + 22 * s, an.carina - 24 * s),
        "aortopulmonary window": an.p(22 * s, -6 * s, an.carina + 6 * s),
        "right hilar": hil_r + np.array([6 * s, -10 * s, -12 * s]),
        "left hilar": hil_l + np.array([-6 * s, -10 * s, -14 * s]),
        "prevascular": an.p(4 * s, -48 * s, an.carina + 22 * s),
    }
    lm["node_stations"] = stations
    for c0 in stations.values():
        r = float(rng.uniform(2.5, 4.0))
        canvas.paint(
            sdf_ellipsoid(c0, (r, r * 0.8, r * 1.2)),
            ellipsoid_bbox(c0, (r, r, r * 1.2)),
            40.0,
            L.LYMPH_NODE,
            within=(L.INTERNAL_SOFT_TISSUE,),
        )

    # ---- pulmonary vessel and airway trees ------------------------------------------------------
    min_r = max(0.45, 0.55 * vox)
    trees = {}
    bronchus_root = {"R": bro_r, "L": bro_l}
    for side, lab, hil in (("R", L.LUNG_RIGHT, hil_r), ("L", L.LUNG_LEFT, hil_l)):
        lsdf, lbb = an.lung_sdf(side), an.lung_bbox(side)
        n_pts = 128 if vox < 1.5 else 64  # coarse grids cannot show the finest branches anyway
        pts_a = _sample_inside(rng, lsdf, lbb, n_pts, 6.0)
        pts_v = _sample_inside(rng, lsdf, lbb, n_pts, 6.0)
        art = build_tree(rng, hil, pts_a, 8.0 * s, 8, min_r)
        vein_root = (
            hc
            + np.array([0.0, 0.5 * hr[1], 0.3 * hr[2]]) @ hrot
            + np.array([(-1 if side == "R" else 1) * 30 * s, 0, 0])
        )
        vein = build_tree(rng, vein_root, pts_v, 7.5 * s, 8, min_r)
        air = build_tree(rng, bronchus_root[side], pts_a, 6.0 * s, 5, max(min_r, 0.8 * vox / 2 + 0.6))
        trees[side] = (art, vein, air)
        for tree, hu in ((art, pa_hu), (vein, ven_hu if an.contrast != "arterial" else art_hu)):
            for a, b, ra, rb, _ in tree.segments:
                canvas.paint(sdf_cone(a, b, ra, rb), capsule_bbox(a, b, ra), hu, None, within=(lab,))
        for a, b, ra, rb, _ in air.segments:
            w = max(0.9, 0.18 * ra)
            canvas.paint(sdf_cone(a, b, ra + w, rb + w), capsule_bbox(a, b, ra + w), 20.0, None, within=(lab,))
            canvas.paint(sdf_cone(a, b, ra, rb), capsule_bbox(a, b, ra), -1000.0, L.AIRWAY, within=(lab, L.AIRWAY))
    lm["trees"] = trees

    # ---- spine ----------------------------------------------------------------------------------
    _paint_spine(canvas, an, rng, lm)
    _paint_ribs(canvas, an, rng, lm)
    return lm


def _bb(lo, hi):
    return (
        (min(lo[0], hi[0]), max(lo[0], hi[0])),
        (min(lo[1], hi[1]), max(lo[1], hi[1])),
        (min(lo[2], hi[2]), max(lo[2], hi[2])),
    )


def _union_bbox(a, b):
    return tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b))


def _paint_body(canvas: Canvas, an: Anatomy, rng) -> None:
    """Skin, subcutaneous fat, muscle wall and the internal cavity from one body distance field."""
    s = an.s
    hu = an.hu
    abd_field = RandomField(rng, _bb(an.p(-250 * s, -250 * s, -500 * s), an.p(250 * s, 250 * s, 60)), 11.0)
    inv_w = np.float32(1.0 / canvas.pv_width)
    # the trunk's bounding box over the whole scan (the air around it stays untouched)
    zs = canvas.grid.axis(0) - np.float32(an.offset[2])
    a_max, ba_max, bp_max = (float(np.max(v)) + 2.0 for v in an.body_axes(zs))
    sl = canvas.box(
        ((an.offset[0] - a_max, an.offset[0] + a_max), (an.offset[1] - ba_max, an.offset[1] + bp_max), (-1e5, 1e5))
    )
    if sl is None:
        return
    for sls, X, Y, Z in canvas.slabs(sl):
        Xr, Yr, Zr = an.rel(X, Y, Z)
        a, ba, bp = an.body_axes(Zr)
        d = Anatomy._ellipse_sdf(Xr, Yr, a, ba, bp)
        d *= -inv_w
        d += np.float32(0.5)  # coverage of the skin surface before clipping
        if not (d > 0).any():
            continue
        ft = an.fat_t(Zr)
        out_hu = canvas.hu[sls]
        out_lab = canvas.label[sls]
        layers = ((0.0, hu["skin"], L.SKIN), (2.0, hu["fat"], L.SUBCUTANEOUS_FAT), (2.0 + ft, hu["muscle"], L.MUSCLE))
        for depth, value, lab in layers:
            alpha = np.clip(
                d - np.float32(depth) * inv_w if np.ndim(depth) == 0 else d - (depth * inv_w).astype(np.float32),
                0.0,
                1.0,
            )
            out_hu += alpha * (np.float32(value) - out_hu)
            out_lab[alpha >= 0.5] = lab
        # internal cavity
        ac, bac, bpc = an.cavity_axes(Zr)
        dc = np.maximum(Anatomy._ellipse_sdf(Xr, Yr, ac, bac, bpc), Zr - (an.apex + 30 * s))
        alpha = np.clip(0.5 - dc * inv_w, 0.0, 1.0)
        if alpha.any():
            w_abd = an.abd(Zr)
            if float(np.max(w_abd)) > 0.01:
                f = abd_field(X, Y, Z)
                bowel = -95.0 + 130.0 * smoothstep(0.1, 0.7, f)
                gas = smoothstep(1.7, 2.1, f)
                v = (hu["fat"] + 10) + w_abd * (bowel - (hu["fat"] + 10))
                v = v + w_abd * gas * (-950.0 - v)
            else:
                v = np.float32(hu["fat"] + 10)
            out_hu += alpha * (v - out_hu)
            out_lab[alpha >= 0.5] = L.INTERNAL_SOFT_TISSUE


def _paint_spine(canvas: Canvas, an: Anatomy, rng, lm) -> None:
    s = an.s
    g = canvas.grid
    z_lo = g.origin[2] - an.offset[2] - 40
    z_hi = g.origin[2] + (g.shape[0] - 1) * g.spacing[0] - an.offset[2] + 40
    wall_ok = (L.INTERNAL_SOFT_TISSUE, L.MUSCLE, L.LUNG_RIGHT, L.LUNG_LEFT, L.SUBCUTANEOUS_FAT)
    # vertebra centres from the top down; pitch grows towards the lumbar spine
    levels = []
    z = an.apex + 95 * s + float(rng.uniform(-8, 8))
    k = 0
    while z > -420 * s:
        levels.append((k, z))
        pitch = (24.0 + 9.0 * float(smoothstep(40 * s, -150 * s, z))) * s
        z -= pitch
        k += 1
    lm["vertebrae"] = levels
    canal_r = 7.5 * s
    for k, zc in levels:
        if zc < z_lo - 40 or zc > z_hi + 40:
            continue
        pitch = (24.0 + 9.0 * float(smoothstep(40 * s, -150 * s, zc))) * s
        lum = float(smoothstep(-40 * s, -160 * s, zc))
        rx, ry = (19 + 6 * lum) * s, (15 + 4 * lum) * s
        h = pitch - (5.5 + 3 * lum) * s
        yv = float(an.spine_y(zc))
        c = an.p(0, yv, zc)

        def body(X, Y, Z, c=c, rx=rx, ry=ry, h=h, inset=0.0):
            k0 = np.sqrt(((X - c[0]) / (rx - inset)) ** 2 + ((Y - c[1]) / (ry - inset)) ** 2)
            d2 = (k0 - 1.0) * min(rx, ry)
            return np.maximum(d2, np.abs(Z - c[2]) - (h / 2 - inset))

        bb = _bb(c - [rx, ry, pitch / 2 + 1], c + [rx, ry, pitch / 2 + 1])
        # disc below
        cd = c - np.array([0, 0, pitch / 2])
        canvas.paint(
            lambda X, Y, Z, cd=cd: np.maximum(
                (np.sqrt(((X - cd[0]) / rx) ** 2 + ((Y - cd[1]) / ry) ** 2) - 1) * ry,
                np.abs(Z - cd[2]) - (pitch - h) / 2 - 0.5,
            ),
            _bb(cd - [rx, ry, pitch / 2], cd + [rx, ry, pitch / 2]),
            85.0,
            L.INTERVERTEBRAL_DISC,
            within=wall_ok,
        )
        canvas.paint(body, bb, an.cortical_hu, L.VERTEBRAE, within=wall_ok + (L.INTERVERTEBRAL_DISC,))
        canvas.paint(
            lambda X, Y, Z, b=body: b(X, Y, Z, inset=1.6 * s), bb, an.cancellous_hu, L.VERTEBRAE, within=(L.VERTEBRAE,)
        )
        # neural arch (ring around the canal), spinous and transverse processes
        yc = yv + ry + canal_r + 1.5 * s
        cc = an.p(0, yc, zc)
        ring_r, ring_t = canal_r + 3.5 * s, 3.3 * s

        def arch(X, Y, Z, cc=cc, h=h):
            r = np.sqrt((X - cc[0]) ** 2 + (Y - cc[1]) ** 2)
            return np.maximum(np.abs(r - ring_r) - ring_t, np.abs(Z - cc[2]) - h * 0.32)

        canvas.paint(
            arch,
            _bb(cc - [ring_r + ring_t] * 3, cc + [ring_r + ring_t] * 3),
            an.cortical_hu * 0.8,
            L.VERTEBRAE,
            within=wall_ok,
        )
        sp_a, sp_b = cc + np.array([0, ring_r, 0]), cc + np.array([0, ring_r + 30 * s, -14 * s])
        canvas.paint(
            sdf_cone(sp_a, sp_b, 4.5 * s, 3.2 * s),
            capsule_bbox(sp_a, sp_b, 4.5 * s),
            an.cortical_hu * 0.75,
            L.VERTEBRAE,
            within=wall_ok,
        )
        for sign in (-1, 1):
            ta, tb = cc + np.array([sign * 8 * s, -2 * s, 0]), cc + np.array([sign * 30 * s, 6 * s, 2 * s])
            canvas.paint(
                sdf_cone(ta, tb, 4.5 * s, 3.8 * s),
                capsule_bbox(ta, tb, 4.5 * s),
                an.cortical_hu * 0.75,
                L.VERTEBRAE,
                within=wall_ok,
            )
    # spinal canal: a continuous tube through all arches
    zs = np.linspace(z_hi, z_lo, 12)
    pts = [
        an.p(0, float(an.spine_y(zz)) + (15 + 4 * float(smoothstep(-40 * s, -160 * s, zz))) * s + canal_r + 1.5 * s, zz)
        for zz in zs
    ]
    _polyline(canvas, pts, canal_r, 22.0, L.SPINAL_CANAL, within=wall_ok + (L.VERTEBRAE,))


def _paint_ribs(canvas: Canvas, an: Anatomy, rng, lm) -> None:
    s = an.s
    r = an.rib_r
    levels = lm["vertebrae"]
    wall_ok = (L.INTERNAL_SOFT_TISSUE, L.MUSCLE, L.SUBCUTANEOUS_FAT, L.LUNG_RIGHT, L.LUNG_LEFT)
    # ribs 1..12 attach to the first 12 vertebrae below the top (T1..T12)
    t1 = next(i for i, (_, z) in enumerate(levels) if z < an.apex + 20 * s)
    ribs = []
    for n in range(12):
        if t1 + n >= len(levels):
            break
        _, zc = levels[t1 + n]
        length = 2.55 if n < 7 else (2.2 - 0.25 * (n - 7))
        drop = (30 + 55 * math.sin(math.pi * min(n, 9) / 12)) * s
        ribs.append((n, zc, length, drop))
    for side in (-1, 1):
        for n, zc, length, drop in ribs:
            th = np.linspace(0.35, length, 9)
            pts = []
            for t in th:
                z = zc - drop * (t - 0.35) / (2.55 - 0.35) + 6 * s * math.sin(t * 1.5)
                ac, bac, bpc = an.cavity_axes(np.float32(z))
                ac, bac, bpc = float(ac), float(bac), float(bpc)
                e = r + 1.0
                y = (bpc + e) * math.cos(t) if math.cos(t) > 0 else (bac + e) * math.cos(t)
                pts.append(an.p(side * (ac + e) * math.sin(t), y, z))
            for a, b in zip(pts[:-1], pts[1:]):
                canvas.paint(sdf_capsule(a, b, r), capsule_bbox(a, b, r), an.cortical_hu, L.RIBS, within=wall_ok)
                canvas.paint(
                    sdf_capsule(a, b, r - 1.4 * s), capsule_bbox(a, b, r), an.cancellous_hu, L.RIBS, within=(L.RIBS,)
                )
            if length > 2.4:  # costal cartilage towards the sternum
                end = pts[-1]
                z_end = end[2] - an.offset[2]
                ac, bac, _ = (float(v) for v in an.cavity_axes(np.float32(z_end)))
                st = an.p(side * 16 * s, -bac - r, z_end + 6 * s)
                canvas.paint(sdf_capsule(end, st, r * 0.85), capsule_bbox(end, st, r), 125.0, L.RIBS, within=wall_ok)
    # sternum
    z_a, z_b = an.carina + 55 * s, 20 * s
    for z0, z1 in ((z_a, z_b),):
        zs = np.linspace(z0, z1, 6)
        pts = [an.p(0, -float(an.cavity_axes(np.float32(z))[1]) - r - 1, z) for z in zs]
        for a, b in zip(pts[:-1], pts[1:]):

            def st_sdf(X, Y, Z, a=a, b=b, inset=0.0):
                t = np.clip((Z - a[2]) / (b[2] - a[2]), 0, 1)
                yc = a[1] + t * (b[1] - a[1])
                k0 = np.sqrt((X / (15 * s - inset) - a[0] / (15 * s - inset)) ** 2 + ((Y - yc) / (6 * s - inset)) ** 2)
                return np.maximum((k0 - 1) * 6 * s, np.maximum(Z - max(a[2], b[2]), min(a[2], b[2]) - Z))

            bb = _bb(np.minimum(a, b) - [16 * s, 8 * s, 1], np.maximum(a, b) + [16 * s, 8 * s, 1])
            canvas.paint(st_sdf, bb, an.cortical_hu, L.STERNUM, within=wall_ok + (L.RIBS,))
            canvas.paint(
                lambda X, Y, Z, f=st_sdf: f(X, Y, Z, inset=1.4 * s),
                bb,
                an.cancellous_hu,
                L.STERNUM,
                within=(L.STERNUM,),
            )
