"""Free-text radiology reports consistent with a phantom's findings.

Reports vary their layout (sectioned Lungs / Heart / Mediastinum / Abdomen / Bones, a CT-RATE-like
prose paragraph, or findings + numbered impression), their sentence templates and which normal
findings they state explicitly. Positive findings always carry a measurement or a location where
the phantom has one ("A 12 mm solid nodule in the right upper lobe.") and use CT-RATE's vocabulary
so that a rule-based labeler maps the text back to the abnormality names; absent findings are
either omitted or stated in negated form ("No pleural effusion.").

:data:`REPORT_TERMS` lists, per finding, the regular expressions one of which every positive
mention contains; a sentence that mentions a term but starts with a negation (``No``, ``There is
no``, ``No evidence of``) states its absence.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["REPORT_TERMS", "NEGATION", "write_report", "mentions"]

REPORT_TERMS: dict[str, tuple[str, ...]] = {
    "lung_nodule": (r"\bnodules?\b",),
    "pleural_effusion": (r"pleural effusions?", r"pleural fluid"),
    "emphysema": (r"emphysema", r"emphysematous"),
    "cardiomegaly": (r"cardiomegaly", r"heart is enlarged", r"enlarged heart", r"cardiac enlargement"),
    "arterial_wall_calcification": (r"aort\w*[^.]*(calcif|atheroscl)", r"(calcif|atheroscl)\w*[^.]*aort"),
    "coronary_artery_wall_calcification": (r"coronary[^.]*calcif", r"calcif[^.]*coronary"),
    "lung_opacity": (r"opacit(y|ies)", r"ground-glass"),
    "consolidation": (r"consolidat\w*",),
    "atelectasis": (r"atelecta\w*",),
    "lymphadenopathy": (r"lymphadenopathy", r"enlarged (mediastinal |hilar )?lymph nodes?"),
    "hiatal_hernia": (r"hiatal hernia", r"hiatus hernia"),
    "pericardial_effusion": (r"pericardial effusion", r"pericardial fluid"),
}
NEGATION = re.compile(r"^\s*(no|there is no|there are no|no evidence of|without)\b", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.;])\s+|\n+", text)
    return [re.sub(r"^\s*(\d+\.|[A-Za-z ]+:)\s*", "", p).strip() for p in parts if p.strip()]


def mentions(report: str, finding: str) -> tuple[bool, bool]:
    """``(positive, negated)``: whether ``report`` affirms ``finding`` in some sentence, and whether
    some sentence mentions it in negated form."""
    pos = neg = False
    for s in _sentences(report):
        if any(re.search(p, s, re.IGNORECASE) for p in REPORT_TERMS[finding]):
            if NEGATION.search(s):
                neg = True
            else:
                pos = True
    return pos, neg


_LOBE = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "lower"): "left lower lobe",
}
_SIDE = {"R": "right", "L": "left"}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _lung_sentences(f, rng) -> tuple[list[str], list[str]]:
    """(sentences, impression items) for the lungs and pleura."""
    out, imp = [], []
    fl = f.flags
    if fl["emphysema"]:
        ext = f.measured.get("laa950_percent", f.emphysema_extent * 100)
        sev = "mild" if ext < 12 else ("moderate" if ext < 25 else "severe")
        pat = f.emphysema_pattern
        where = "predominantly in the upper lobes" if pat != "panlobular" else "more pronounced in the lower lobes"
        out.append(
            _pick(
                rng,
                [
                    f"{sev.capitalize()} {pat} emphysematous changes are observed in both lungs.",
                    f"{pat.capitalize()} emphysema of {sev} extent ({ext:.0f}% of lung volume below -950 HU).",
                    f"There are {sev} {pat} emphysematous changes, {where}.",
                ],
            )
        )
        imp.append(f"{sev.capitalize()} {pat} emphysema.")
    if fl["lung_nodule"]:
        nods = sorted(f.nodules, key=lambda n: -n.diameter_mm)
        big = nods[0]
        kind = "solid" if big.kind == "solid" else _pick(rng, ["subsolid", "non-solid"])
        loc = _LOBE[(big.side, big.lobe)]
        if len(nods) == 1:
            out.append(
                _pick(
                    rng,
                    [
                        f"A {big.diameter_mm:.0f} mm {kind} nodule in the {loc}.",
                        f"There is a {kind} nodule measuring {big.diameter_mm:.0f} mm in the {loc}.",
                        f"{kind.capitalize()} pulmonary nodule in the {loc}, {big.diameter_mm:.0f} mm in diameter.",
                    ],
                )
            )
            imp.append(f"{big.diameter_mm:.0f} mm {kind} nodule in the {loc}.")
        else:
            others = ", ".join(f"{n.diameter_mm:.0f} mm in the {_LOBE[(n.side, n.lobe)]}" for n in nods[1:])
            out.append(
                f"Multiple pulmonary nodules: the largest is {kind}, measuring {big.diameter_mm:.0f} mm "
                f"in the {loc}; others measure {others}."
            )
            imp.append(f"Multiple pulmonary nodules, largest {big.diameter_mm:.0f} mm in the {loc}.")
    done = set()
    for op in f.opacities:
        key = (op["kind"], op["lobe"])
        if key in done:  # one sentence per kind and lobe
            continue
        done.add(key)
        loc = _LOBE[op["lobe"]]
        if op["kind"] == "consolidation":  # CT-RATE counts consolidation as a lung opacity too
            out.append(
                _pick(
                    rng,
                    [
                        f"Consolidative opacity with air bronchograms in the {loc}.",
                        f"Consolidative opacity in the {loc}.",
                        f"An area of consolidation (dense parenchymal opacity) is present in the {loc}.",
                    ],
                )
            )
            imp.append(f"Consolidation in the {loc}.")
        else:
            out.append(
                _pick(
                    rng,
                    [
                        f"Patchy ground-glass opacities in the {loc}.",
                        f"Ground-glass opacity in the {loc}.",
                        f"There are areas of ground-glass opacity in the {loc}.",
                    ],
                )
            )
            imp.append(f"Ground-glass opacity in the {loc}.")
    at = f.atelectasis
    if fl["atelectasis"]:
        loc = _LOBE[at["lobe"]]
        if at["kind"] == "compressive":
            out.append(
                _pick(
                    rng,
                    [
                        f"Compressive atelectasis of the adjacent {loc}.",
                        f"Passive atelectasis in the {loc} adjacent to the effusion.",
                    ],
                )
            )
        else:
            out.append(
                _pick(
                    rng,
                    [
                        f"Subsegmental plate-like atelectasis in the {loc}.",
                        f"Linear atelectasis at the base of the {loc}.",
                    ],
                )
            )
        imp.append(f"Atelectasis in the {loc}.")
    if fl["pleural_effusion"]:
        ml = f.measured.get("effusion_ml", {})

        def size(v):
            return "small" if v < 300 else ("moderate" if v < 800 else "large")

        if len(ml) == 2:
            out.append(
                f"Bilateral pleural effusions, {size(ml['R'])} on the right (about {ml['R']:.0f} mL) "
                f"and {size(ml['L'])} on the left (about {ml['L']:.0f} mL)."
            )
            imp.append("Bilateral pleural effusions.")
        else:
            ((sd, v),) = ml.items()
            out.append(
                _pick(
                    rng,
                    [
                        f"{size(v).capitalize()} {_SIDE[sd]} pleural effusion (approximately {v:.0f} mL).",
                        f"There is a {size(v)} pleural effusion on the {_SIDE[sd]}, about {v:.0f} mL.",
                    ],
                )
            )
            imp.append(f"{size(v).capitalize()} {_SIDE[sd]} pleural effusion.")
    # stated negatives
    negs = []
    for key, text in (
        ("lung_nodule", "pulmonary nodule"),
        ("consolidation", "consolidation"),
        ("pleural_effusion", "pleural effusion"),
        ("emphysema", "emphysema"),
        ("atelectasis", "atelectasis"),
    ):
        if not fl[key] and rng.random() < 0.75:
            negs.append(text)
    if not fl["lung_opacity"] and rng.random() < 0.4:
        negs.append("ground-glass opacity")
    if negs:
        if rng.random() < 0.5 and len(negs) > 1:
            out.append("No " + ", ".join(negs[:-1]) + " or " + negs[-1] + ".")
        else:
            out.extend(_pick(rng, [f"No {n}.", f"There is no {n}."]) for n in negs)
    if not any(fl[k] for k in ("lung_nodule", "lung_opacity", "emphysema", "atelectasis")) and rng.random() < 0.5:
        out.insert(0, "Lung parenchyma is clear.")
    return out, imp


def _heart_sentences(f, rng):
    out, imp = [], []
    fl = f.flags
    if fl["cardiomegaly"]:
        out.append(
            _pick(
                rng,
                [
                    "Cardiomegaly.",
                    "The heart is enlarged (cardiomegaly).",
                    "Heart size is increased, consistent with cardiomegaly.",
                    "Cardiac enlargement is noted.",
                ],
            )
        )
        imp.append("Cardiomegaly.")
    else:
        out.append(_pick(rng, ["Heart size is normal.", "Heart size is within normal limits.", "No cardiomegaly."]))
    if fl["pericardial_effusion"]:
        out.append(f"Pericardial effusion with a maximum thickness of {f.pericardial_mm:.0f} mm.")
        imp.append("Pericardial effusion.")
    elif rng.random() < 0.7:
        out.append(_pick(rng, ["No pericardial effusion.", "There is no pericardial effusion."]))
    if fl["coronary_artery_wall_calcification"]:
        out.append(
            _pick(
                rng,
                [
                    "Calcified atherosclerotic plaques in the coronary arteries.",
                    "Coronary artery wall calcifications are present.",
                    "Coronary artery calcification is noted.",
                ],
            )
        )
        imp.append("Coronary artery calcification.")
    elif rng.random() < 0.5:
        out.append("No coronary artery calcification.")
    return out, imp


def _mediastinum_sentences(f, rng):
    out, imp = [], []
    fl = f.flags
    out.append(
        _pick(
            rng,
            [
                "Trachea and both main bronchi are patent.",
                "The trachea and main bronchi are open.",
                "Central airways are patent.",
            ],
        )
    )
    if fl["arterial_wall_calcification"]:
        out.append(
            _pick(
                rng,
                [
                    "Calcific atherosclerotic changes in the wall of the thoracic aorta.",
                    "Atherosclerotic calcifications of the aortic wall.",
                    "Calcified plaques along the aortic arch and descending aorta.",
                ],
            )
        )
        imp.append("Aortic atherosclerotic calcification.")
    elif rng.random() < 0.5:
        out.append("No calcification of the aortic wall.")
    if fl["lymphadenopathy"]:
        nodes = sorted(f.nodes, key=lambda t: -t[1])
        st = ", ".join(f"{s} ({d:.0f} mm short axis)" for s, d in nodes)
        out.append(
            _pick(
                rng,
                [
                    f"Mediastinal lymphadenopathy: enlarged lymph nodes at the {st} stations.",
                    f"Enlarged lymph nodes are seen in the {st} station(s), consistent with lymphadenopathy.",
                ],
            )
        )
        imp.append("Mediastinal/hilar lymphadenopathy.")
    else:
        out.append(
            _pick(
                rng,
                [
                    "No mediastinal or hilar lymphadenopathy.",
                    "No pathologically enlarged lymph nodes.",
                    "No lymphadenopathy.",
                ],
            )
        )
    if fl["hiatal_hernia"]:
        out.append(
            _pick(
                rng,
                [
                    f"A hiatal hernia measuring about {2 * f.hernia_mm / 10:.0f} cm is present.",
                    f"Sliding hiatal hernia ({2 * f.hernia_mm:.0f} mm).",
                ],
            )
        )
        imp.append("Hiatal hernia.")
    elif rng.random() < 0.4:
        out.append("No hiatal hernia.")
    return out, imp


def _abdomen_sentences(f, rng, contrast: str):
    out = []
    if contrast != "none":
        out.append(f"Contrast-enhanced study ({'arterial' if contrast == 'arterial' else 'portal venous'} phase).")
    out.append(
        _pick(
            rng,
            [
                "Liver and spleen are normal in size in the included sections.",
                "The imaged upper abdominal organs are unremarkable.",
                "No focal lesion in the included portions of the liver and spleen.",
            ],
        )
    )
    return out


def _bone_sentences(f, rng, age: float):
    out = []
    if age > 60 and rng.random() < 0.6:
        out.append("Degenerative changes of the thoracic spine.")
    out.append(
        _pick(
            rng, ["No lytic or sclerotic bone lesions.", "Bony structures are intact.", "No acute osseous abnormality."]
        )
    )
    return out


def write_report(f, rng: np.random.Generator, *, contrast: str, age: float) -> str:
    """Compose a report for findings ``f`` (whose ``measured`` dict holds effusion volumes etc.)."""
    lungs, i1 = _lung_sentences(f, rng)
    heart, i2 = _heart_sentences(f, rng)
    med, i3 = _mediastinum_sentences(f, rng)
    abd = _abdomen_sentences(f, rng, contrast)
    bones = _bone_sentences(f, rng, age)
    impression = i1 + i2 + i3
    layout = int(rng.integers(3))
    technique = _pick(
        rng,
        [
            "Non-contrast chest CT." if contrast == "none" else "Contrast-enhanced chest CT.",
            "CT of the thorax.",
            "Chest CT, axial images with multiplanar reconstructions.",
        ],
    )
    if layout == 0:
        parts = [
            f"TECHNIQUE: {technique}",
            "FINDINGS:",
            "Lungs: " + " ".join(lungs),
            "Heart: " + " ".join(heart),
            "Mediastinum: " + " ".join(med),
            "Abdomen: " + " ".join(abd),
            "Bones: " + " ".join(bones),
            "IMPRESSION:",
        ]
        if impression:
            parts += [f"{i + 1}. {t}" for i, t in enumerate(impression)]
        else:
            parts.append("1. No acute abnormality in the chest.")
        return "\n".join(parts)
    if layout == 1:
        body = " ".join(med + heart + lungs + abd + bones)
        imp = " ".join(impression) if impression else "Normal chest CT."
        return f"Findings: {body}\nImpression: {imp}"
    sections = [
        ("LUNGS AND PLEURA", lungs),
        ("HEART AND PERICARDIUM", heart),
        ("MEDIASTINUM", med),
        ("UPPER ABDOMEN", abd),
        ("BONES", bones),
    ]
    text = [technique]
    for name, sents in sections:
        text.append(f"{name}: " + " ".join(sents))
    text.append("CONCLUSION: " + (" ".join(impression) if impression else "No significant abnormality."))
    return "\n".join(text)
