"""Abnormal findings of the phantoms, modelled on CT-RATE's abnormality labels.

Findings are drawn per case, independently apart from plausible dependencies (smoking raises
emphysema, nodule and calcification risk; age raises calcification and cardiomegaly; effusion
raises atelectasis). Chronic findings (nodules, emphysema, calcifications, cardiomegaly, hiatal
hernia) belong to the patient and persist across that patient's scans; acute findings (effusions,
consolidation, ground-glass opacity, atelectasis, lymphadenopathy) are re-drawn per scan.

Every positive finding is drawn large enough to change a visible volume of voxels at the scan's
voxel size (e.g. nodule diameter ≥ max(3 mm, 2.2 × in-plane spacing, 1.1 × slice spacing)), and
after rendering the generator checks the volume and drops any finding that did not become visible
(e.g. a nodule outside the field of view), so the table never claims what the image does not show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

from voxelfm.data.phantoms import labels as L
from voxelfm.data.phantoms.anatomy import Anatomy, rotation
from voxelfm.data.phantoms.canvas import Canvas, RandomField, capsule_bbox, ellipsoid_bbox, sdf_ellipsoid, sdf_sphere

__all__ = [
    "FINDINGS",
    "FINDING_SIZE_MM",
    "Nodule",
    "Findings",
    "draw_chronic",
    "draw_findings",
    "render_findings",
    "render_emphysema",
    "lobe_of",
]

FINDINGS: tuple[str, ...] = (
    "lung_nodule",
    "pleural_effusion",
    "emphysema",
    "cardiomegaly",
    "arterial_wall_calcification",
    "coronary_artery_wall_calcification",
    "lung_opacity",
    "consolidation",
    "atelectasis",
    "lymphadenopathy",
    "hiatal_hernia",
    "pericardial_effusion",
)

#: The smallest extent (mm) across the structure a positive finding is drawn with — what decides
#: whether a feature grid whose token spans T mm can see it at all (a finding narrower than one
#: token changes a fraction of that token's voxels). From the draws below: nodule diameter ≥ 3 mm;
#: wall / coronary calcification plaque ≥ 2.6–3 mm; plate-like atelectasis 4 mm thick; pericardial
#: fluid rim ≥ 6 mm; lymph nodes ≥ 12 mm; hiatal hernia ≥ 22 mm; consolidation ellipsoid radii
#: ≥ 24 mm (so opacities ≥ 48 mm across); a pleural effusion of ≥ 120 ml (≈ 49 mm cube); emphysema
#: is diffuse over 10–35 % of the lungs and cardiomegaly enlarges the whole heart (≥ 100 mm).
FINDING_SIZE_MM: dict[str, float] = {
    "lung_nodule": 3.0,
    "pleural_effusion": 49.0,
    "emphysema": 100.0,
    "cardiomegaly": 100.0,
    "arterial_wall_calcification": 3.0,
    "coronary_artery_wall_calcification": 2.6,
    "lung_opacity": 48.0,
    "consolidation": 48.0,
    "atelectasis": 4.0,
    "lymphadenopathy": 12.0,
    "hiatal_hernia": 22.0,
    "pericardial_effusion": 6.0,
}


@dataclass
class Nodule:
    """One lung nodule. ``rel`` is the centre in the patient frame (mm); ``center_mm`` (LPS) and
    ``voxel`` (canonical d, h, w) are set when rendered."""

    diameter_mm: float
    kind: str  # "solid" | "ground-glass"
    rel: np.ndarray
    side: str = ""
    lobe: str = ""
    hu: float = 30.0
    center_mm: tuple[float, float, float] | None = None
    voxel: tuple[int, int, int] | None = None


@dataclass
class Findings:
    """All findings of one scan (flags 0/1 plus the parameters that realise them)."""

    flags: dict[str, int]
    nodules: list[Nodule] = field(default_factory=list)
    effusion_ml: dict[str, float] = field(default_factory=dict)  # side -> target ml
    emphysema_extent: float = 0.0
    emphysema_pattern: str = ""
    cardiac_scale: float = 1.0
    plaques: list[tuple[int, float, float, float]] = field(default_factory=list)
    coronary: list[tuple[int, float]] = field(default_factory=list)
    opacities: list[dict] = field(default_factory=list)
    atelectasis: dict = field(default_factory=dict)
    nodes: list[tuple[str, float]] = field(default_factory=list)
    hernia_mm: float = 0.0
    pericardial_mm: float = 0.0
    measured: dict = field(default_factory=dict)
    suppressed: frozenset = frozenset()


def lobe_of(an: Anatomy, rel: np.ndarray) -> tuple[str, str]:
    """(side, lobe name) of a patient-frame point, from an oblique and a horizontal fissure."""
    x, y, z = (float(v) for v in rel)
    s = an.s
    side = "right" if x < an.mediast_x else "left"
    z_oblique = 70 * s + 0.8 * y  # higher posteriorly
    if z > z_oblique:
        if side == "right":
            return side, "upper" if z > an.carina - 25 * s else "middle"
        return side, "upper"
    return side, "lower"


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def draw_chronic(rng: np.random.Generator, patient, an0: Anatomy) -> dict:
    """Patient-level findings: emphysema, nodules, calcifications, cardiomegaly, hiatal hernia."""
    age, sm = patient.age, patient.smoker
    c: dict = {}
    c["emphysema"] = int(rng.random() < 0.14 + 0.6 * sm + 0.003 * (age - 60))
    c["emphysema_extent"] = float(rng.uniform(0.1, 0.35)) if c["emphysema"] else 0.0
    c["emphysema_pattern"] = str(rng.choice(["centrilobular", "centrilobular", "panlobular", "paraseptal"]))
    c["cardiomegaly"] = int(rng.random() < 0.15 + 0.008 * (age - 55))
    c["cardiac_scale"] = float(rng.uniform(1.27, 1.45)) if c["cardiomegaly"] else float(rng.uniform(0.9, 1.06))
    p_calc = _logistic(-0.9 + 0.07 * (age - 63) + 1.2 * sm)
    c["arterial_wall_calcification"] = int(rng.random() < p_calc)
    c["coronary_artery_wall_calcification"] = int(rng.random() < (0.7 if c["arterial_wall_calcification"] else 0.12))
    c["hiatal_hernia"] = int(rng.random() < 0.16)
    c["hernia_mm"] = float(rng.uniform(22, 40)) if c["hiatal_hernia"] else 0.0
    c["lung_nodule"] = int(rng.random() < 0.22 + 0.3 * sm)
    nodules = []
    if c["lung_nodule"]:
        n = 1 + int(rng.geometric(0.55)) - 1
        nrng = np.random.default_rng([patient.anatomy_seed, 11])
        for _ in range(min(n, 5)):
            d = float(np.clip(math.exp(rng.uniform(math.log(3.0), math.log(30.0))), 3.0, 30.0))
            kind = "ground-glass" if rng.random() < 0.25 else "solid"
            side = "R" if nrng.random() < 0.55 else "L"
            lsdf, lbb = an0.lung_sdf(side), an0.lung_bbox(side)
            lo = np.array([b[0] for b in lbb])
            hi = np.array([b[1] for b in lbb])
            for _ in range(400):
                p = nrng.uniform(lo, hi)
                if float(lsdf(np.float32(p[0]), np.float32(p[1]), np.float32(p[2]))) < -(d / 2 + 6.0):
                    break
            hu = float(rng.uniform(15, 60)) if kind == "solid" else float(rng.uniform(-620, -380))
            nodules.append(Nodule(diameter_mm=d, kind=kind, rel=p, hu=hu))
    c["nodules"] = nodules
    c["plaques"] = (
        [
            (
                int(rng.integers(2, 9)),
                float(rng.random()),
                float(rng.uniform(0, 2 * math.pi)),
                float(rng.uniform(1.5, 3.2)),
            )
            for _ in range(int(rng.integers(3, 12)))
        ]
        if c["arterial_wall_calcification"]
        else []
    )
    c["coronary"] = (
        [(int(rng.integers(0, 16)), float(rng.uniform(1.3, 2.6))) for _ in range(int(rng.integers(2, 7)))]
        if c["coronary_artery_wall_calcification"]
        else []
    )
    return c


def draw_findings(rng: np.random.Generator, patient, chronic: dict, an0: Anatomy, spacing) -> Findings:
    """Scan-level findings (acute ones re-drawn) sized to be visible at ``spacing`` (sz, sy, sx)."""
    sz, _, sx = spacing
    vis = max(sx, 0.5 * sz)  # resolvable length scale of this scan (mm)
    f = Findings(flags={k: 0 for k in FINDINGS})
    for k in (
        "emphysema",
        "cardiomegaly",
        "arterial_wall_calcification",
        "coronary_artery_wall_calcification",
        "hiatal_hernia",
        "lung_nodule",
    ):
        f.flags[k] = chronic[k]
    f.emphysema_extent = chronic["emphysema_extent"]
    f.emphysema_pattern = chronic["emphysema_pattern"]
    f.cardiac_scale = chronic["cardiac_scale"]
    f.hernia_mm = max(chronic["hernia_mm"], 3.5 * vis) if chronic["hiatal_hernia"] else 0.0
    min_d = max(3.0, 2.2 * sx, 1.1 * sz)
    for n in chronic["nodules"]:
        d = max(n.diameter_mm * float(rng.uniform(0.97, 1.08)), min_d)
        f.nodules.append(Nodule(diameter_mm=round(d, 1), kind=n.kind, rel=n.rel.copy(), hu=n.hu))
    f.plaques = [(i, t, a, max(r, 0.8 * vis)) for i, t, a, r in chronic["plaques"]]
    f.coronary = [(i, max(r, 0.8 * vis)) for i, r in chronic["coronary"]]
    cm = chronic["cardiomegaly"]
    f.flags["pleural_effusion"] = int(rng.random() < 0.16 + 0.25 * cm)
    if f.flags["pleural_effusion"]:
        r = rng.random()
        sides = ["R", "L"] if r < 0.45 else (["R"] if r < 0.75 else ["L"])
        for sd in sides:
            f.effusion_ml[sd] = float(math.exp(rng.uniform(math.log(120), math.log(1400))))
    f.flags["pericardial_effusion"] = int(rng.random() < 0.13 + 0.1 * cm)
    f.pericardial_mm = max(float(rng.uniform(6, 18)), 2.2 * vis) if f.flags["pericardial_effusion"] else 0.0
    f.flags["consolidation"] = int(rng.random() < 0.17)
    ggo = int(rng.random() < 0.17)
    f.flags["lung_opacity"] = int(ggo or f.flags["consolidation"])
    for kind, present, n_max in (("consolidation", f.flags["consolidation"], 2), ("ground-glass", ggo, 3)):
        if not present:
            continue
        for _ in range(int(rng.integers(1, n_max + 1))):
            side = "R" if rng.random() < 0.55 else "L"
            lsdf, lbb = an0.lung_sdf(side), an0.lung_bbox(side)
            lo = np.array([b[0] for b in lbb])
            hi = np.array([b[1] for b in lbb])
            for _ in range(400):
                p = rng.uniform(lo, hi)
                if float(lsdf(np.float32(p[0]), np.float32(p[1]), np.float32(p[2]))) < -15.0:
                    break
            big = (24, 42) if kind == "consolidation" else (30, 58)
            radii = rng.uniform(*big, size=3)
            radii = np.maximum(radii, 3 * vis)
            f.opacities.append(
                {
                    "kind": kind,
                    "rel": p,
                    "radii": radii,
                    "yaw": float(rng.uniform(0, math.pi)),
                    "hu": float(rng.uniform(-45, 40)) if kind == "consolidation" else float(rng.uniform(260, 400)),
                }
            )
    p_atel = 0.12 + (0.45 if f.flags["pleural_effusion"] else 0.0)
    f.flags["atelectasis"] = int(rng.random() < p_atel)
    if f.flags["atelectasis"]:
        if f.effusion_ml and rng.random() < 0.7:
            f.atelectasis = {
                "kind": "compressive",
                "side": str(rng.choice(sorted(f.effusion_ml))),
                "band_mm": max(float(rng.uniform(7, 14)), 2.5 * vis),
            }
        else:
            side = "R" if rng.random() < 0.5 else "L"
            f.atelectasis = {
                "kind": "plate-like",
                "side": side,
                "thick_mm": max(float(rng.uniform(4, 7)), 2.2 * vis),
                "len_mm": float(rng.uniform(40, 70)),
                "yaw": float(rng.uniform(-0.5, 0.5)),
            }
    f.flags["lymphadenopathy"] = int(rng.random() < 0.16 + 0.12 * f.flags["lung_nodule"])
    if f.flags["lymphadenopathy"]:
        stations = [
            "right paratracheal",
            "left paratracheal",
            "subcarinal",
            "aortopulmonary window",
            "right hilar",
            "left hilar",
            "prevascular",
        ]
        chosen = rng.choice(stations, size=int(rng.integers(1, 4)), replace=False)
        f.nodes = [(str(st), round(max(float(rng.uniform(12, 26)), 2.6 * vis), 0)) for st in chosen]
    return f


def _paint(canvas: Canvas, f: "Findings", kind: str, *args, **kwargs) -> int:
    """Paint unless ``kind`` is suppressed (counterfactual rendering keeps every random draw)."""
    if kind in f.suppressed:
        return 0
    return canvas.paint(*args, **kwargs)


def render_emphysema(canvas: Canvas, an: Anatomy, f: Findings, rng: np.random.Generator) -> None:
    """Low-attenuation regions (< −950 HU) in the lungs, before the vessels are drawn."""
    if not f.flags["emphysema"]:
        return
    s = an.s
    corr = {"centrilobular": 5.0, "panlobular": 9.0, "paraseptal": 5.0}[f.emphysema_pattern]
    bb_r, bb_l = an.lung_bbox("R"), an.lung_bbox("L")
    bbox = tuple((min(a[0], b[0]), max(a[1], b[1])) for a, b in zip(bb_r, bb_l))
    fld = RandomField(rng, bbox, max(corr, 0.9 * canvas.pv_width))
    z_lo, z_hi = an.dome_r[2] - an.dome_depth, an.apex
    upper = {"centrilobular": 1.0, "panlobular": -0.8, "paraseptal": 0.6}[f.emphysema_pattern]
    thr = 0.8 * float(ndtri(1.0 - f.emphysema_extent))  # interpolation shrinks the field variance
    paraseptal = f.emphysema_pattern == "paraseptal"
    lsdf_r, lsdf_l = an.lung_sdf("R"), an.lung_sdf("L")

    def sdf(X, Y, Z):
        w = (Z - np.float32(an.offset[2] + (z_lo + z_hi) / 2)) / np.float32((z_hi - z_lo) / 2)
        v = fld(X, Y, Z) + np.float32(upper * 0.9) * w
        if paraseptal:  # subpleural predominance
            edge = np.minimum(-lsdf_r(X, Y, Z), -lsdf_l(X, Y, Z))
            v = v + np.float32(1.2) - np.clip(edge / np.float32(12.0 * s), 0, 2)
        return (np.float32(thr) - v) * np.float32(3.0)

    value = float(rng.uniform(-990, -970))
    _paint(canvas, f, "emphysema", sdf, bbox, value, None, within=L.LUNGS)


def _node_value(contrast: str) -> float:
    return 42.0 + (25.0 if contrast != "none" else 0.0)


def render_findings(canvas: Canvas, an: Anatomy, lm, f: Findings, rng: np.random.Generator) -> dict:
    """Paint the (non-parenchymal) findings after the anatomy. Returns voxel counts per finding
    on the render grid (for the visibility check)."""
    s = an.s
    g = canvas.grid
    counts: dict[str, int] = {}
    lungs = L.LUNGS
    # ---- consolidation and ground-glass opacity ----------------------------------------------------
    counts["consolidation"] = counts["ground-glass"] = 0
    for op in f.opacities:
        c = an.p(*op["rel"])
        rot = rotation(yaw=op["yaw"])
        e = sdf_ellipsoid(c, op["radii"], rot)
        bb = ellipsoid_bbox(c, op["radii"] * 1.3, rot)
        fld = RandomField(rng, bb, 9.0)
        shape = lambda X, Y, Z, e=e, fld=fld: e(X, Y, Z) + np.float32(7.0) * fld(X, Y, Z)  # noqa: E731
        if op["kind"] == "consolidation":
            n = _paint(canvas, f, "consolidation", shape, bb, op["hu"], None, within=lungs)
        else:
            delta = np.float32(op["hu"])

            def ggo(X, Y, Z, hu, delta=delta):  # raise parenchyma, leave vessels alone
                return delta * np.clip((np.float32(-450.0) - hu) / np.float32(300.0), 0.0, 1.0)

            ggo.uses_hu = True
            n = _paint(canvas, f, "lung_opacity", shape, bb, ggo, None, within=lungs, add=True)
        counts[op["kind"]] += n

    # ---- pleural effusion (dependent fluid) and compressive atelectasis ----------------------------
    counts["pleural_effusion"] = 0
    counts["atelectasis"] = 0
    grad = math.sqrt(1.0 + 0.15**2)
    for side, ml in f.effusion_ml.items():
        lab = L.LUNG_RIGHT if side == "R" else L.LUNG_LEFT
        sl = canvas.box(an.lung_bbox(side))
        if sl is None:
            continue
        sub = canvas.label[sl][:, ::2, ::2] == lab
        idx = np.nonzero(sub)
        if idx[0].size == 0:
            continue
        Z = g.axis(0)[sl[0]][idx[0]] - an.offset[2]
        Y = g.axis(1)[sl[1]][::2][idx[1]] - an.offset[1]
        score = Y - 0.15 * Z
        vox_ml = g.spacing[0] * g.spacing[1] * g.spacing[2] * 4 / 1000.0
        frac = min(0.35, ml / (idx[0].size * vox_ml))
        thr = float(np.quantile(score, 1.0 - frac))

        def eff_sdf(X, Y, Z, thr=thr):
            return (
                np.float32(thr) - ((Y - np.float32(an.offset[1])) - 0.15 * (Z - np.float32(an.offset[2])))
            ) / np.float32(grad)

        counts["pleural_effusion"] += _paint(
            canvas,
            f,
            "pleural_effusion",
            eff_sdf,
            an.lung_bbox(side),
            float(rng.uniform(4, 18)),
            L.PLEURAL_EFFUSION,
            within=(lab,),
        )
        at = f.atelectasis
        if at.get("kind") == "compressive" and at["side"] == side:
            band = at["band_mm"]
            counts["atelectasis"] += _paint(
                canvas,
                f,
                "atelectasis",
                lambda X, Y, Z, e=eff_sdf: np.abs(e(X, Y, Z) - np.float32(band / 2)) - np.float32(band / 2),
                an.lung_bbox(side),
                float(rng.uniform(-60, 20)),
                None,
                within=(lab,),
            )
    # ---- plate-like atelectasis at a lung base ----------------------------------------------------
    at = f.atelectasis
    if at.get("kind") == "plate-like":
        side = at["side"]
        lab = L.LUNG_RIGHT if side == "R" else L.LUNG_LEFT
        dome = an.dome_r if side == "R" else an.dome_l
        sign = -1 if side == "R" else 1
        rel = np.array([sign * 70 * s, 25 * s, dome[2] + 28 * s])
        c = an.p(*rel)
        radii = (at["len_mm"] / 2, at["len_mm"] / 2.5, at["thick_mm"] / 2)
        rot = rotation(yaw=at["yaw"], pitch=0.25 * sign)
        counts["atelectasis"] += _paint(
            canvas,
            f,
            "atelectasis",
            sdf_ellipsoid(c, radii, rot),
            ellipsoid_bbox(c, radii, rot),
            float(rng.uniform(-40, 30)),
            None,
            within=(lab,),
        )
        at["rel"] = rel

    # ---- nodules ---------------------------------------------------------------------------------
    for n in f.nodules:
        p = an.p(*n.rel)
        d, h, w = g.mm_to_index(p)
        # snap the centre to a voxel centre: in-plane, and along z to the sub-slice whose labels the
        # output slice keeps (the central one), so the centroid voxel is always labelled
        k = getattr(canvas, "subslices", 1)
        j = int(round((d - (k - 1) / 2) / k))
        di, hi_, wi = j * k + k // 2, int(round(h)), int(round(w))
        p = np.array(
            [g.origin[0] + wi * g.spacing[2], g.origin[1] + hi_ * g.spacing[1], g.origin[2] + di * g.spacing[0]]
        )
        n.center_mm = (float(p[0]), float(p[1]), float(p[2]))
        r = n.diameter_mm / 2
        radii = (r * float(rng.uniform(0.9, 1.1)), r * float(rng.uniform(0.9, 1.1)), r * float(rng.uniform(0.9, 1.1)))
        _paint(
            canvas,
            f,
            "lung_nodule",
            sdf_ellipsoid(p, radii),
            ellipsoid_bbox(p, radii),
            n.hu,
            L.LUNG_NODULE,
            within=lungs + (L.LUNG_NODULE,),
        )
        n.side, n.lobe = lobe_of(an, n.rel)

    # ---- enlarged mediastinal / hilar lymph nodes -------------------------------------------------
    counts["lymphadenopathy"] = 0
    stations = lm["node_stations"]
    for st, short in f.nodes:
        c = stations[st]
        radii = (short / 2 * 1.15, short / 2, short / 2 * 1.5)
        counts["lymphadenopathy"] += _paint(
            canvas,
            f,
            "lymphadenopathy",
            sdf_ellipsoid(c, radii),
            ellipsoid_bbox(c, radii),
            _node_value(an.contrast),
            L.LYMPH_NODE,
            within=(L.INTERNAL_SOFT_TISSUE, L.LYMPH_NODE) + lungs,
        )

    # ---- calcified plaques: aortic wall and coronary arteries -----------------------------------------
    counts["arterial_wall_calcification"] = 0
    ao, ao_r = lm["aorta"]
    for i, t, ang, rp in f.plaques:
        a, b = np.asarray(ao[i]), np.asarray(ao[i + 1])
        axis = (b - a) / max(np.linalg.norm(b - a), 1e-6)
        e1 = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        r = ao_r[i] + t * (ao_r[i + 1] - ao_r[i])
        c = a + t * (b - a) + (r - 0.4 * rp) * (math.cos(ang) * e1 + math.sin(ang) * e2)
        counts["arterial_wall_calcification"] += _paint(
            canvas,
            f,
            "arterial_wall_calcification",
            sdf_sphere(c, rp),
            capsule_bbox(c, c, rp),
            float(rng.uniform(450, 1100)),
            L.CALCIFICATION,
            within=(L.AORTA, L.INTERNAL_SOFT_TISSUE) + lungs,
        )
    counts["coronary_artery_wall_calcification"] = 0
    ring, lad = lm["coronary"]
    path = list(ring) + list(lad)
    for i, rp in f.coronary:
        c = np.asarray(path[i % len(path)])
        counts["coronary_artery_wall_calcification"] += _paint(
            canvas,
            f,
            "coronary_artery_wall_calcification",
            sdf_sphere(c, rp),
            capsule_bbox(c, c, rp),
            float(rng.uniform(350, 1000)),
            L.CALCIFICATION,
            within=(L.INTERNAL_SOFT_TISSUE, L.HEART),
        )

    # ---- hiatal hernia: stomach above the diaphragm in the posterior mediastinum -----------------
    counts["hiatal_hernia"] = 0
    if f.flags["hiatal_hernia"]:
        R = f.hernia_mm
        eso = lm["esophagus"]
        hiatus = np.asarray(eso[4])
        rel = hiatus - an.offset
        top = float(an.diaphragm(np.float32(rel[0]), np.float32(rel[1])))
        c = an.p(rel[0] - 4 * s, rel[1] + 6 * s, top + 0.75 * R)
        radii = np.array([R, 0.8 * R, 1.1 * R])
        ok = (L.INTERNAL_SOFT_TISSUE, L.ESOPHAGUS, L.MUSCLE, L.LIVER, L.STOMACH, L.PLEURAL_EFFUSION) + lungs
        counts["hiatal_hernia"] = _paint(
            canvas, f, "hiatal_hernia", sdf_ellipsoid(c, radii), ellipsoid_bbox(c, radii), 42.0, L.STOMACH, within=ok
        )
        gas_level = c[1] - float(rng.uniform(0.1, 0.6)) * radii[1]
        content = lambda X, Y, Z: np.where(Y < gas_level, -1000.0, 15.0).astype(np.float32)  # noqa: E731
        _paint(
            canvas,
            f,
            "hiatal_hernia",
            sdf_ellipsoid(c, radii - 3.5),
            ellipsoid_bbox(c, radii),
            content,
            L.STOMACH,
            within=(L.STOMACH,),
        )
    return counts
