"""Label values of the phantom organ label map (``<id>_seg.nii.gz``) and their names.

The same table is written to ``DIR/labels.json``. Lung vessels are part of the lung labels (as in
lobe segmentations); emphysema, ground-glass, consolidation and atelectasis change lung intensities
but keep the lung label; nodules, effusions and lymph nodes have labels of their own.
"""

from __future__ import annotations

__all__ = ["LABELS", "LABEL_NAMES"]

BACKGROUND = 0
SKIN = 1
SUBCUTANEOUS_FAT = 2
MUSCLE = 3
INTERNAL_SOFT_TISSUE = 4
LUNG_RIGHT = 5
LUNG_LEFT = 6
AIRWAY = 7
HEART = 8
AORTA = 9
PULMONARY_ARTERY = 10
ESOPHAGUS = 11
VERTEBRAE = 12
INTERVERTEBRAL_DISC = 13
SPINAL_CANAL = 14
RIBS = 15
STERNUM = 16
LIVER = 17
SPLEEN = 18
KIDNEY_RIGHT = 19
KIDNEY_LEFT = 20
STOMACH = 21
LUNG_NODULE = 22
PLEURAL_EFFUSION = 23
PERICARDIAL_EFFUSION = 24
LYMPH_NODE = 25
CALCIFICATION = 26
TABLE = 27

LABELS: dict[int, str] = {
    BACKGROUND: "background",
    SKIN: "skin",
    SUBCUTANEOUS_FAT: "subcutaneous_fat",
    MUSCLE: "muscle",
    INTERNAL_SOFT_TISSUE: "internal_soft_tissue",
    LUNG_RIGHT: "lung_right",
    LUNG_LEFT: "lung_left",
    AIRWAY: "airway",
    HEART: "heart",
    AORTA: "aorta",
    PULMONARY_ARTERY: "pulmonary_artery",
    ESOPHAGUS: "esophagus",
    VERTEBRAE: "vertebrae",
    INTERVERTEBRAL_DISC: "intervertebral_disc",
    SPINAL_CANAL: "spinal_canal",
    RIBS: "ribs",
    STERNUM: "sternum",
    LIVER: "liver",
    SPLEEN: "spleen",
    KIDNEY_RIGHT: "kidney_right",
    KIDNEY_LEFT: "kidney_left",
    STOMACH: "stomach",
    LUNG_NODULE: "lung_nodule",
    PLEURAL_EFFUSION: "pleural_effusion",
    PERICARDIAL_EFFUSION: "pericardial_effusion",
    LYMPH_NODE: "lymph_node",
    CALCIFICATION: "calcification",
    TABLE: "table",
}
LABEL_NAMES: dict[str, int] = {v: k for k, v in LABELS.items()}
LUNGS = (LUNG_RIGHT, LUNG_LEFT)
