"""Rule-based CT-RATE labeler on crafted sentences: synonyms, negation scope, uncertainty, normals."""

from __future__ import annotations

import pytest

from voxelfm.reportgen.labeler import (
    ABNORMALITIES,
    FINDING_COLUMNS,
    RuleLabeler,
    abnormality_name,
    label_report,
    label_reports,
)


def positives(text: str, **kw) -> set[str]:
    return {k for k, v in label_report(text, **kw).items() if v}


def test_eighteen_names_and_columns():
    assert len(ABNORMALITIES) == 18 and ABNORMALITIES[0] == "Medical material"
    assert ABNORMALITIES[-1] == "Interlobular septal thickening"
    assert FINDING_COLUMNS["Coronary artery wall calcification"] == "coronary_artery_wall_calcification"
    assert FINDING_COLUMNS["Pulmonary fibrotic sequela"] == "pulmonary_fibrotic_sequela"
    assert abnormality_name("lung_nodule") == "Lung nodule" and abnormality_name("LUNG NODULE") == "Lung nodule"
    with pytest.raises(KeyError, match="not one of the 18"):
        abnormality_name("pneumothorax")
    r = label_report("")
    assert list(r) == list(ABNORMALITIES) and not any(r.values())


@pytest.mark.parametrize("text, expected", [
    ("Mild cardiomegaly.", {"Cardiomegaly"}),
    ("Enlarged heart.", {"Cardiomegaly"}),
    ("Cardiac enlargement is noted.", {"Cardiomegaly"}),
    ("The heart is mildly enlarged.", {"Cardiomegaly"}),
    ("Bilateral ground-glass opacities.", {"Lung opacity"}),
    ("Calcified plaques in the aorta.", {"Arterial wall calcification"}),
    ("Atherosclerotic calcifications of the aortic wall.", {"Arterial wall calcification"}),
    ("Coronary artery calcification.", {"Coronary artery wall calcification"}),
    ("Calcified plaques in the aorta and coronary arteries.",
     {"Arterial wall calcification", "Coronary artery wall calcification"}),
    ("Mediastinal lymph nodes measuring up to 15 mm in short axis.", {"Lymphadenopathy"}),
    ("Hilar lymph node measuring 1.2 cm.", {"Lymphadenopathy"}),
    ("Enlarged mediastinal lymph nodes.", {"Lymphadenopathy"}),
    ("Centrilobular emphysema in both upper lobes.", {"Emphysema"}),
    ("Small hiatus hernia.", {"Hiatal hernia"}),
    ("Sternotomy wires and a cardiac pacemaker.", {"Medical material"}),
    ("Fibrotic sequelae in the right middle lobe.", {"Pulmonary fibrotic sequela"}),
    ("Mosaic attenuation pattern in both lungs.", {"Mosaic attenuation pattern"}),
    ("Bronchial wall thickening.", {"Peribronchial thickening"}),
    ("Traction bronchiectasis.", {"Bronchiectasis", "Pulmonary fibrotic sequela"}),
    ("Thickening of the interlobular septa.", {"Interlobular septal thickening"}),
    ("Small bilateral effusions.", {"Pleural effusion"}),
    ("Pericardial effusion with a maximum thickness of 11 mm.", {"Pericardial effusion"}),
    ("Consolidation with air bronchograms in the right lower lobe.", {"Consolidation"}),
    ("Subsegmental atelectasis at the left base.", {"Atelectasis"}),
    ("A 6 mm nodule in the right upper lobe.", {"Lung nodule"}),
])
def test_synonyms(text, expected):
    assert positives(text) == expected


@pytest.mark.parametrize("text", [
    "No pleural effusion.",
    "There is no pleural effusion.",
    "Pleural effusion is not seen.",
    "Pleural effusion has resolved.",
    "Negative for pneumothorax and pleural effusion.",
    "Lungs are clear without pleural effusion.",
    "No evidence of consolidation or pleural effusion.",
    "There is no evidence of lymphadenopathy, pleural effusion or pericardial effusion.",
    "Neither pleural nor pericardial effusion.",
    "No consolidation, atelectasis, pleural effusion or pneumothorax.",
    "Consolidation and pleural effusion are not identified.",
])
def test_negations_cover_coordinated_lists(text):
    assert positives(text) == set()


@pytest.mark.parametrize("text, expected", [
    # the scope of a negation ends at a new statement
    ("No pleural effusion, mild cardiomegaly.", {"Cardiomegaly"}),
    ("No effusion is seen and the heart is enlarged.", {"Cardiomegaly"}),
    ("No pleural effusion but a small pericardial effusion.", {"Pericardial effusion"}),
    ("Consolidation in the right lower lobe, no pleural effusion.", {"Consolidation"}),
    # several findings in one sentence
    ("Bronchial wall thickening and bronchiectasis in the lower lobes, with interlobular septal thickening "
     "and mosaic attenuation.", {"Peribronchial thickening", "Bronchiectasis", "Interlobular septal thickening",
                                 "Mosaic attenuation pattern"}),
    ("Mild bilateral pleural effusions and a small pericardial effusion.", {"Pleural effusion", "Pericardial effusion"}),
    ("Pleural thickening and pericardial effusion.", {"Pericardial effusion"}),
    # pseudo-negation: "no change" does not negate
    ("No change in the size of the 5 mm nodule.", {"Lung nodule"}),
    # look-alikes that are not the abnormality
    ("Subcutaneous emphysema in the chest wall.", set()),
    ("Thyroid nodule in the right lobe.", set()),
    ("Subcentimeter mediastinal lymph nodes.", set()),
    ("Mediastinal lymph nodes measuring up to 8 mm.", set()),
    ("Lymph nodes are not enlarged.", set()),
    ("Heart size is normal.", set()),
])
def test_scope_and_lookalikes(text, expected):
    assert positives(text) == expected


def test_uncertainty_policy():
    for text in ("Possible small left pleural effusion.", "A small pleural effusion cannot be excluded.",
                 "Findings suspicious for pleural effusion.", "Probable pleural effusion."):
        assert positives(text) == {"Pleural effusion"}, text
        assert positives(text, uncertain="negative") == set(), text
    m = RuleLabeler().mentions("Pleural effusion cannot be ruled out. No consolidation.")
    assert [(x.abnormality, x.status) for x in m] == [("Pleural effusion", "uncertain"),
                                                       ("Pleural effusion", "uncertain"),
                                                       ("Consolidation", "negative")]
    with pytest.raises(ValueError, match="uncertain"):
        RuleLabeler(uncertain="maybe")


def test_normal_reports_are_all_negative():
    normal = ("TECHNIQUE: Chest CT, axial images with multiplanar reconstructions.\nFINDINGS:\n"
              "Lungs: No pulmonary nodule. There is no consolidation. There is no pleural effusion. There is no "
              "emphysema. No atelectasis.\nHeart: Heart size is normal. There is no pericardial effusion. No coronary "
              "artery calcification.\nMediastinum: The trachea and main bronchi are open. No calcification of the "
              "aortic wall. No pathologically enlarged lymph nodes. No hiatal hernia.\nBones: No acute osseous "
              "abnormality.\nIMPRESSION:\n1. No acute cardiopulmonary abnormality.")
    assert positives(normal) == set()
    assert positives("Trachea and main bronchi are patent. No mass. No pericardial effusion.") == set()


def test_phantom_style_report_and_table():
    report = ("Findings: Central airways are patent. No calcification of the aortic wall. No lymphadenopathy. "
              "No cardiomegaly. Pericardial effusion with a maximum thickness of 18 mm. Consolidation with air "
              "bronchograms in the right middle lobe. The consolidative opacity is the only parenchymal opacity. "
              "There is no pulmonary nodule. There is no pleural effusion. No atelectasis.\n"
              "Impression: Consolidation in the right middle lobe. Pericardial effusion.")
    assert positives(report) == {"Pericardial effusion", "Consolidation", "Lung opacity"}
    df = label_reports({"a": report, "b": "Mild cardiomegaly.", "c": None})
    assert list(df.index) == ["a", "b", "c"] and list(df.columns) == list(FINDING_COLUMNS.values())
    assert df.loc["a", "pericardial_effusion"] == 1 and df.loc["b", "cardiomegaly"] == 1
    assert int(df.loc["c"].sum()) == 0 and df.values.dtype.kind == "i"
    named = label_reports(["Emphysema."], columns="names")
    assert named.loc[0, "Emphysema"] == 1


def test_custom_subset_and_determinism():
    lab = RuleLabeler(abnormalities=["cardiomegaly", "Pleural effusion"])
    assert lab("Cardiomegaly and pleural effusion.") == {"Cardiomegaly": True, "Pleural effusion": True}
    text = "Mild cardiomegaly. No effusion. Possible nodule."
    assert label_report(text) == label_report(text)
