"""Procedural digital CT phantoms: a labelled chest CT cohort generated in seconds.

Each case is a patient-sized trunk (skin, fat, muscle, table) with lungs (vessel and airway trees),
heart and pericardium, aorta and pulmonary arteries, spine and ribs, liver, spleen, kidneys and
stomach, acquired with a drawn voxel spacing, correlated noise and optional cupping, stored as int16
NIfTI (varying orientation codes) or a DICOM series, with an organ label map, CT-RATE-style findings
(:data:`FINDINGS`), a consistent free-text report and simulated clinical targets (lung function,
survival). Synthetic data for exercising the pipeline — not clinical evidence; see docs/phantoms.md.

Example::

    from voxelfm.data.phantoms import generate_cohort
    table = generate_cohort("phantoms", n=200, seed=0)   # writes phantoms/cohort.csv + volumes
"""

from voxelfm.data.phantoms.cohort import COHORT_COLUMNS, PhantomCase, case_plan, generate_case, generate_cohort
from voxelfm.data.phantoms.findings import FINDING_SIZE_MM, FINDINGS
from voxelfm.data.phantoms.labels import LABELS
from voxelfm.data.phantoms.reports import REPORT_TERMS, mentions

__all__ = [
    "FINDINGS",
    "FINDING_SIZE_MM",
    "LABELS",
    "COHORT_COLUMNS",
    "REPORT_TERMS",
    "PhantomCase",
    "case_plan",
    "generate_case",
    "generate_cohort",
    "mentions",
]
