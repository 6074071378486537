"""Rule-based labeler: which of the 18 CT-RATE abnormalities does a radiology report mention?

The paper scores generated reports by the abnormalities they state. The reference asks a 120 B LLM
(through Ollama) to read every report; this module does the same job with rules, so it is fast,
deterministic and runs anywhere (an LLM labeler for users who have an endpoint lives in
:mod:`voxelfm.reportgen.llm_labeler`).

How a report is read (in the spirit of NegEx / the CheXpert labeler):

1. **Normalise**: lower case, hyphens and slashes to spaces (``ground-glass`` → ``ground glass``),
   ``<report>`` tags dropped, whitespace collapsed.
2. **Sentences**: split at ``.`` (not inside numbers such as ``1.5``), ``;``, ``:``, ``?``, ``!`` and
   line breaks. Nothing crosses a sentence boundary.
3. **Mentions**: each abnormality has synonyms (regular expressions, and "proximity" rules such as
   *calcif…* within six words of *aort…*), with exclusions (``subcutaneous emphysema`` is not
   emphysema; ``thyroid nodule`` is not a lung nodule; a pericardial effusion is not a pleural one;
   lymph nodes count only when called enlarged / pathological or measured at ≥ 10 mm).
4. **Negation**: a trigger before the mention (``no``, ``without``, ``negative for``, ``no evidence
   of``, ``absence of``, ``free of``, ``neither``/``nor``, ...) negates every mention up to the end of
   its scope, so coordinated lists are covered ("no evidence of consolidation or pleural effusion").
   The scope ends at the end of the sentence, at a conjunction that starts a new statement (``but``,
   ``however``, ``although``, ``except``, ``whereas``, ``which``), at a predicate (``is``, ``are``,
   ``was``, ``seen``, ``noted``, ``present``, ...: "no effusion is seen and the heart is enlarged")
   or at a comma that starts a new noun phrase (``, the``, ``, there``, ``, mild``, ``, moderate``,
   ``, severe``, ``, marked``, ``, minimal``). A trigger after the mention (``is not seen``, ``are not
   identified``, ``is absent``, ``has resolved``, ``was ruled out``) negates the mentions before it
   back to the previous predicate. Pseudo-triggers (``no change``, ``no interval change``,
   ``no significant change``, ``not only``) are ignored.
5. **Uncertainty**: ``possible``, ``probable``, ``likely``, ``suspected``, ``suspicious for``,
   ``suggestive of``, ``concerning for``, ``questionable``, ``may represent``, ``cannot be excluded``,
   ``not excluded``, ``cannot be ruled out`` mark a mention uncertain (checked before negation, so
   "cannot be excluded" is not read as a negation). ``uncertain="positive"`` (default, like the
   CheXpert "U-ones" policy and the reference's LLM prompt, which counts suspected findings) counts
   uncertain mentions as present; ``uncertain="negative"`` as absent.

An abnormality is present when at least one mention is positive (or uncertain, under the positive
policy). Results are a ``dict[str, bool]`` over :data:`ABNORMALITIES` in that order; the phantom
cohort and the probe tables use the snake_case column names of :data:`FINDING_COLUMNS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ABNORMALITIES",
    "FINDING_COLUMNS",
    "Mention",
    "RuleLabeler",
    "column_name",
    "abnormality_name",
    "label_report",
    "label_reports",
]

#: The 18 CT-RATE abnormalities, in the order of the reference (REFERENCE.md §4.8).
ABNORMALITIES: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


def column_name(abnormality: str) -> str:
    """The snake_case column name of an abnormality (``"Lung nodule"`` → ``"lung_nodule"``),
    as in CT-RATE's per-label files and the phantom cohort's finding columns."""
    return abnormality.strip().lower().replace(" ", "_")


#: Abnormality name → snake_case column name (``"Pleural effusion"`` → ``"pleural_effusion"``).
FINDING_COLUMNS: dict[str, str] = {name: column_name(name) for name in ABNORMALITIES}
_BY_COLUMN = {col: name for name, col in FINDING_COLUMNS.items()}


def abnormality_name(name_or_column: str) -> str:
    """Map a column name or an abnormality name (any case) to the canonical abnormality name.

    Raises:
        KeyError: if it is not one of the 18 CT-RATE abnormalities.
    """
    key = column_name(name_or_column)
    if key not in _BY_COLUMN:
        raise KeyError(f"{name_or_column!r} is not one of the 18 CT-RATE abnormalities "
                       f"({', '.join(FINDING_COLUMNS.values())})")
    return _BY_COLUMN[key]


# ---------------------------------------------------------------------------------------------
# Text handling
# ---------------------------------------------------------------------------------------------

_SENTENCE_SPLIT = re.compile(r"(?<!\d)\.(?!\d)|\.(?=\s|$)|[;:?!\n\r]+")


def _normalise(text: str) -> str:
    text = re.sub(r"</?\s*report\s*>", " ", str(text), flags=re.IGNORECASE)
    text = text.lower()
    text = re.sub(r"(?<=[a-z])[-/](?=[a-z])", " ", text)  # ground-glass → ground glass
    text = text.replace("\u2019", "'")
    text = re.sub(r"[ \t]+", " ", text)
    return text


def _sentences(text: str) -> list[str]:
    parts = _SENTENCE_SPLIT.split(text)
    return [p.strip() for p in parts if p and p.strip()]


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# ---------------------------------------------------------------------------------------------
# Mention rules
# ---------------------------------------------------------------------------------------------

Span = tuple[int, int]


@dataclass(frozen=True)
class _Pattern:
    """Plain regular expression; ``exclude_before`` is searched in the 40 characters before."""

    regex: re.Pattern[str]
    exclude_before: re.Pattern[str] | None = None
    exclude_after: re.Pattern[str] | None = None

    def find(self, s: str) -> list[Span]:
        out = []
        for m in self.regex.finditer(s):
            before = s[max(0, m.start() - 40):m.start()]
            after = s[m.end():m.end() + 40]
            if self.exclude_before is not None and self.exclude_before.search(before):
                continue
            if self.exclude_after is not None and self.exclude_after.match(after):
                continue
            out.append((m.start(), m.end()))
        return out


@dataclass(frozen=True)
class _Near:
    """Two expressions within ``max_words`` words of each other (either order unless ``ordered``).

    Each occurrence of ``a`` pairs with its nearest ``b``; the mention spans from the first to the
    last of the pair. A pair is rejected when the words between them match ``exclude_gap`` (the
    first word belongs to another noun: "pleural *thickening* and pericardial effusion") or the span
    matches ``exclude``. A comma between the two is allowed only in short lists ("calcified
    plaques in the aorta, iliac and coronary arteries").
    """

    a: re.Pattern[str]
    b: re.Pattern[str]
    max_words: int = 6
    ordered: bool = False
    exclude: re.Pattern[str] | None = None
    exclude_gap: re.Pattern[str] | None = None

    def find(self, s: str) -> list[Span]:
        out: list[Span] = []
        b_hits = _spans(self.b, s)
        for a0, a1 in _spans(self.a, s):
            best: tuple[int, Span] | None = None
            for b0, b1 in b_hits:
                if a0 < b1 and b0 < a1:  # overlapping matches are not a pair
                    continue
                if self.ordered and b0 < a0:
                    continue
                lo, hi = min(a0, b0), max(a1, b1)
                gap = s[min(a1, b1):max(a0, b0)]
                n_words = len(gap.split())
                if n_words > self.max_words:
                    continue
                if ("," in gap and n_words > 5) or "(" in gap or ")" in gap:
                    continue
                if self.exclude_gap is not None and self.exclude_gap.search(gap):
                    continue
                if self.exclude is not None and self.exclude.search(s[lo:hi]):
                    continue
                if best is None or len(gap) < best[0]:
                    best = (len(gap), (lo, hi))
            if best is not None and best[1] not in out:
                out.append(best[1])
        return out


@dataclass(frozen=True)
class _EnlargedNodes:
    """Lymph nodes called enlarged/pathological, or measured at ≥ ``min_mm`` (short axis)."""

    min_mm: float = 10.0

    _node = _rx(r"\b(?:lymph\s*nodes?|nodes)\b")
    _size = _rx(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b")
    _enlarged = _rx(r"\b(?:enlarged|enlargement|pathologic(?:al)?(?:ly)?|prominent|bulky|"
                    r"increased\s+in\s+(?:size|number)|conglomerate\w*|necrotic)\b")
    _small = _rx(r"\b(?:sub\s?centimetr?ic|subcentimeter|millimetric|small|non\s*pathologic(?:al)?|"
                 r"not\s+(?:pathologically\s+)?enlarged|normal\s+(?:size|sized))\b")

    def find(self, s: str) -> list[Span]:
        out: list[Span] = []
        for m in self._node.finditer(s):
            lo = max(0, m.start() - 60)
            hi = min(len(s), m.end() + 60)
            # stop the window at a clause boundary so sizes of other structures do not leak in
            left = s[lo:m.start()]
            cut = max(left.rfind(","), left.rfind(" and "), left.rfind(" but "))
            if cut >= 0 and cut < len(left) - 40:
                left = left[cut + 1:]
            right = s[m.end():hi]
            if self._small.search(left[-30:] + " " + right[:25]):
                continue
            near = left[-40:] + " " + right[:40]
            if self._enlarged.search(near):
                out.append((m.start(), m.end()))
                continue
            sizes = []
            for sm in self._size.finditer(right):
                v = float(sm.group(1)) * (10.0 if sm.group(2) == "cm" else 1.0)
                sizes.append(v)
            if sizes and max(sizes) >= self.min_mm:
                out.append((m.start(), m.end()))
        return out


_W = r"(?:\s+\S+){0,3}?"  # up to three intervening words (lazy)

_CORONARY_VESSEL = (r"coronar\w*|\blad\b|left\s+anterior\s+descending|circumflex|\blcx\b|\brca\b|"
                    r"right\s+coronary|left\s+main")
_CALCIF = r"calcif\w*|plaques?|atheroscl\w*|atherom\w*|calcium"


def _arterial_rule() -> Callable[[str], list[Span]]:
    """Calcification of a non-coronary artery (aorta, carotid, iliac, 'vascular', ...).

    "coronary artery" does not count as an artery here (that is the coronary label); an unqualified
    "atherosclerotic changes" counts only when the sentence names no coronary vessel.
    """
    vessel = _rx(r"\baort\w*|(?<!coronary\s)\barter(?:y|ies|ial)\b|\bvascular\b|\bvessels?\b|\bcarotid\w*|"
                 r"\bsubclavian\b|\bbrachiocephalic\b|\biliac\b|\bsupra\s*aortic\b|"
                 r"\bmesenteric\b|\bceliac\b|\bvertebral\b|\bfemoral\b")
    calc = _rx(r"\bcalcif\w*|\bplaques?\b|\batheroscl\w*|\batherom\w*")
    near = _Near(vessel, calc, max_words=6)
    bare = _rx(r"\batheroscleros[ie]s\b|\batherosclerotic\s+(?:changes?|calcif\w*|disease|plaques?)\b|"
               r"\bvascular\s+calcif\w*|\batheromatous\s+(?:changes?|calcif\w*|plaques?)\b")
    coronary = _rx(_CORONARY_VESSEL)

    def find(s: str) -> list[Span]:
        spans = near.find(s)
        if not spans and not coronary.search(s):
            spans = _spans(bare, s)
        return spans

    return find


class _Func:
    def __init__(self, fn: Callable[[str], list[Span]]) -> None:
        self._fn = fn

    def find(self, s: str) -> list[Span]:
        return self._fn(s)


# words that make "pleural ... effusion" two different findings ("pleural thickening and ...")
_OTHER_NOUN = _rx(r"\b(?:thickening|thickened|calcif\w*|plaques?|nodul\w*|mass\w*|lesions?|"
                  r"recess\w*|space|surfaces?|reflection|margins?)\b")


def _default_rules() -> dict[str, list[object]]:
    P, N = _Pattern, _Near
    non_lung_organ = _rx(r"\b(?:thyroid|adrenal|hepatic|liver|renal|kidney|breast|splenic|spleen|"
                         r"pancrea\w*|skin|cutaneous|subcutaneous|lymph|gland)\b\W*(?:\w+\W+){0,2}$")
    return {
        "Medical material": [
            P(_rx(r"\b(?:catheters?|stents?|pacemakers?|pace\s*makers?|defibrillators?|\bicd\b|"
                  r"port\s*a\s*cath|portacath|chemoport|\bports?\b(?=\s+(?:catheter|device|reservoir))|"
                  r"sternotomy|sternal\s+(?:wires?|sutures?|cerclage)|cerclage\s+wires?|"
                  r"surgical\s+(?:clips?|sutures?|material|staples?)|(?:metallic|vascular)\s+clips?|"
                  r"\bclips?\b|prosthe(?:sis|ses|tic)|implants?|drains?|drainage\s+tubes?|"
                  r"(?:chest|endotracheal|tracheostomy|nasogastric|feeding|thoracostomy)\s+tubes?|"
                  r"tracheostomy|\bpicc\b|central\s+venous\s+(?:line|catheter)|coils?|embolization\s+material|"
                  r"valve\s+replacement|(?:mechanical|prosthetic)\s+valves?|medical\s+(?:material|devices?)|"
                  r"foreign\s+(?:body|material)|metallic\s+(?:material|density|artifacts?|hardware)|"
                  r"hardware|osteosynthesis|fixation\s+(?:material|screws?|plates?)|screws?|"
                  r"lead\s+wires?|electrodes?)\b")),
        ],
        "Arterial wall calcification": [_Func(_arterial_rule())],
        "Cardiomegaly": [
            P(_rx(r"\bcardiomegal\w*|\bcardiac\s+enlargement\b|\benlarge(?:d|ment\s+of)\s+(?:the\s+)?"
                  r"(?:heart|cardiac\s+(?:silhouette|contour|shadow|size))\b|\bheart\s+(?:size\s+)?"
                  r"(?:is|was|appears?|seems?)\s+(?:mildly\s+|moderately\s+|markedly\s+|slightly\s+)?"
                  r"(?:enlarged|increased)|\bincreased\s+(?:heart|cardiac)\s+size|"
                  r"\b(?:heart|cardiac)\s+size\s+(?:is\s+)?increased|\benlargement\s+of\s+the\s+heart\b")),
        ],
        "Pericardial effusion": [
            N(_rx(r"\bpericardi\w*"), _rx(r"\beffusions?\b|\bfluid\b|\bthickening\s+effusion\b"),
              max_words=4, exclude_gap=_OTHER_NOUN),
            P(_rx(r"\bh(?:a)?emopericardium\b")),
        ],
        "Coronary artery wall calcification": [
            N(_rx(_CORONARY_VESSEL), _rx(_CALCIF), max_words=6),
        ],
        "Hiatal hernia": [
            N(_rx(r"\bhiat\w*"), _rx(r"\bherni\w*"), max_words=3),
            P(_rx(r"\b(?:sliding|paraesophageal|para\s*oesophageal)\s+hernia\b")),
        ],
        "Lymphadenopathy": [
            P(_rx(r"\b(?:lymph\s*)?adenopath\w*|\blap\b|\blymphadenomegal\w*|\blymph\s+node\s+enlargement\b|"
                  r"\bnodal\s+enlargement\b")),
            _EnlargedNodes(),
        ],
        "Emphysema": [
            P(_rx(r"\bemphysema\w*|\bbullae\b|\bbulla\b|\bbullous\b|\bblebs?\b"),
              exclude_before=_rx(r"\b(?:subcutaneous|mediastinal|soft\s+tissue|interstitial\s+"
                                 r"soft|surgical|chest\s+wall|subcutaneous\s+tissue)\s*$")),
        ],
        "Atelectasis": [
            P(_rx(r"\batelecta\w*|\bfibroatelecta\w*|\b(?:lobar|lung|lobe|segmental)\s+collapse\b|"
                  r"\bcollapsed?\s+(?:lung|lobe|segment)\b|\bpassive\s+collapse\b|\bcompressive\s+collapse\b")),
        ],
        "Lung nodule": [
            P(_rx(r"\b(?:micro)?nodul(?:e|es|ar\s+(?:opacit\w*|lesions?|densit\w*|infiltrat\w*))\b|"
                  r"\bnodular\s+(?:ground\s+glass|areas?)\b|\bpulmonary\s+masse?s?\b|\blung\s+masse?s?\b"),
              exclude_before=non_lung_organ),
        ],
        "Lung opacity": [
            P(_rx(r"\bopacit(?:y|ies)\b|\bground\s+glass\b|\bggos?\b|\binfiltrat\w*|"
                  r"\b(?:increased|parenchymal)\s+densit(?:y|ies)\b|\bdensit(?:y|ies)\s+increase\w*|"
                  r"\bcrazy\s+paving\b|\bhaziness\b"),
              exclude_before=_rx(r"\b(?:lens|bone|sclerotic|no\s+mass\s+or)\s*$")),
        ],
        "Pulmonary fibrotic sequela": [
            P(_rx(r"\bfibro(?:sis|tic|us)\b|\bfibrotic\s+\w+|\bfibroatelecta\w*|\bsequela\w*|"
                  r"\bscar(?:s|ring)?\b|\bhoneycomb\w*|\breticulat\w*|\breticular\s+(?:opacit\w*|pattern|changes?)|"
                  r"\bparenchymal\s+bands?\b|\bfibrous\s+bands?\b|\btraction\s+bronchiect\w*"),
              exclude_before=_rx(r"\b(?:myocardial|cardiac|liver|hepatic|cystic|retroperitoneal|"
                                 r"mediastinal|skin|surgical|breast)\s*$")),
        ],
        "Pleural effusion": [
            N(_rx(r"\bpleura\w*"), _rx(r"\beffusions?\b|\bfluid\b"), max_words=4, exclude_gap=_OTHER_NOUN),
            P(_rx(r"\beffusions?\b"),
              exclude_before=_rx(r"\b(?:pericardial|pericardium|joint|pericardial\s+thickening)\s*$|"
                                 r"\bpericardi\w*\s+(?:\w+\s+){0,2}$")),
            P(_rx(r"\bhydrothorax\b|\bh(?:a)?emothorax\b|\bempyema\b|\bfluid\s+in\s+the\s+"
                  r"(?:pleural\s+space|hemithorax|costophrenic)")),
        ],
        "Mosaic attenuation pattern": [
            P(_rx(r"\bmosaic\w*|\bair\s+trapping\b")),
        ],
        "Peribronchial thickening": [
            P(_rx(r"\b(?:peri\s*)?bronch(?:ial|ovascular|iolar)\s+(?:wall\s+)?(?:thickening|cuffing)\b|"
                  r"\bthicken(?:ed|ing)\s+(?:of\s+)?(?:the\s+)?(?:peri)?bronchial\s+walls?\b|"
                  r"\b(?:peri)?bronchial\s+walls?\s+(?:are\s+|is\s+|were\s+|was\s+)?(?:\w+\s+)?thickened\b|"
                  r"\bperibronchial\s+(?:infiltrat\w*|opacit\w*|changes?)\b|\bbronchial\s+thickening\b")),
        ],
        "Consolidation": [
            P(_rx(r"\bconsolidat\w*|\bair\s*bronchograms?\b|\bair\s*space\s+(?:disease|opacit\w*)\b|"
                  r"\bpneumonic\s+(?:infiltrat\w*|changes?|consolidat\w*)\b|\bpneumonia\b")),
        ],
        "Bronchiectasis": [
            P(_rx(r"\bbronchiect\w*|\bbronchiolect\w*|\bdilat(?:ed|ation|ion)\s+(?:of\s+)?(?:the\s+)?bronch\w*|"
                  r"\bbronch(?:i|ial|ial\s+tubes?)\s+(?:\w+\s+)?dilat(?:ed|ation|ion)\b")),
        ],
        "Interlobular septal thickening": [
            N(_rx(r"\b(?:interlobular\s+)?sept(?:al|a)\b|\bseptal\s+lines?\b"), _rx(r"\bthicken\w*"),
              max_words=4, exclude=_rx(r"\binter\s*(?:atrial|ventricular)|\bnasal\b|\bcardiac\b")),
            P(_rx(r"\bkerley\s*b?\s*lines?\b|\bcrazy\s+paving\b|\bseptal\s+lines?\b")),
        ],
    }


# ---------------------------------------------------------------------------------------------
# Negation and uncertainty
# ---------------------------------------------------------------------------------------------

_PSEUDO = _rx(r"\bno\s+(?:significant\s+|interval\s+|appreciable\s+|substantial\s+|major\s+)?"
              r"(?:change|increase|decrease|progression|growth)\b|\bnot\s+only\b|\bnot\s+necessarily\b|"
              r"\bno\s+longer\s+\w+\s+on\b|\bgram\s+negative\b|\bnot\s+changed\b|\bnot\s+increased\b")
_UNCERTAIN_PRE = _rx(r"\b(?:possible|possibly|probable|probably|likely|suspected|suspicious\s+(?:for|of)|"
                     r"suggestive\s+of|suggesting|concerning\s+for|questionable|equivocal|may\s+(?:be|represent)|"
                     r"might\s+(?:be|represent)|could\s+(?:be|represent)|cannot\s+exclude|can\s+not\s+exclude|"
                     r"differential\s+(?:diagnosis\s+)?includes?|compatible\s+with|rule\s+out|r/o|"
                     r"consider(?:ed)?|favou?r(?:ed|ing)?|presum(?:ed|ably)|indeterminate)\b")
_UNCERTAIN_POST = _rx(r"\b(?:cannot|can\s*not|could\s+not|can't)\s+be\s+(?:excluded|ruled\s+out|"
                      r"(?:entirely|completely|definitely)\s+(?:excluded|ruled\s+out))|\bnot\s+(?:be\s+)?"
                      r"(?:excluded|ruled\s+out)|\b(?:is|are|was|were)\s+(?:suspected|possible|"
                      r"questionable|not\s+certain)|\bversus\b|\bvs\b|\bor\s+less\s+likely\b|\?")
_NEG_PRE = _rx(r"\b(?:no|not|without|absence\s+of|absent|negative\s+for|free\s+of|free\s+from|"
               r"neither|nor|denies|ruled\s+out|rules\s+out|resolution\s+of|resolved|"
               r"no\s+(?:evidence|sign|signs|findings?|indication)\s+of|there\s+(?:is|are)\s+no|"
               r"none|nothing|lack\s+of|rather\s+than|instead\s+of|excluded|exclude)\b")
_NEG_POST = _rx(r"\b(?:(?:is|are|was|were|has\s+been|have\s+been|has|have|had)\s+)?(?:not\s+(?:seen|identified|observed|"
                r"detected|present|evident|visuali[sz]ed|noted|demonstrated|appreciated|found|visible|"
                r"shown|apparent|recognized)|absent|(?:no\s+longer)\s+\w+|resolved|ruled\s+out|"
                r"excluded|disappeared)\b|\b(?:is|are|was|were)\s+(?:not\s+)?(?:within\s+normal\s+limits)\b")
# A predicate closes the forward scope of a preceding negation ("no effusion is seen, and ...").
_PREDICATE = _rx(r"\b(?:is|are|was|were|has|have|had|seen|noted|present|identified|observed|detected|"
                 r"shows?|showed|demonstrat\w*|remains?|appears?|measur\w*|visualized|visualised)\b")
_TERMINATOR = _rx(r"\b(?:but|however|although|though|except|apart\s+from|aside\s+from|whereas|while|"
                  r"which|who|yet|nevertheless|still|otherwise)\b|,\s*(?:and\s+)?(?:the|there|mild|mildly|"
                  r"moderate|moderately|severe|severely|marked|markedly|minimal|minimally)\b")


def _mask(s: str, spans: Iterable[Span]) -> str:
    chars = list(s)
    for a, b in spans:
        for i in range(a, b):
            chars[i] = " "
    return "".join(chars)


def _spans(rx: re.Pattern[str], s: str) -> list[Span]:
    return [(m.start(), m.end()) for m in rx.finditer(s)]


def _in_pre_scope(s: str, triggers: list[Span], start: int) -> bool:
    for t0, t1 in triggers:
        if t1 > start:
            continue
        gap = s[t1:start]
        if _TERMINATOR.search(gap) or _PREDICATE.search(gap):
            continue
        return True
    return False


def _in_post_scope(s: str, triggers: list[Span], end: int) -> bool:
    for t0, _t1 in triggers:
        if t0 < end:
            continue
        gap = s[end:t0]
        if _TERMINATOR.search(gap) or _PREDICATE.search(gap):
            continue
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

Status = Literal["positive", "negative", "uncertain"]


@dataclass(frozen=True)
class Mention:
    """One mention of an abnormality in a report.

    Attributes:
        abnormality: canonical name (one of :data:`ABNORMALITIES`).
        text: the matched words (normalised, lower case).
        sentence: the normalised sentence it was found in.
        status: ``"positive"``, ``"negative"`` (negated) or ``"uncertain"``.
    """

    abnormality: str
    text: str
    sentence: str
    status: Status


class RuleLabeler:
    """Deterministic rule-based labeler over the 18 CT-RATE abnormalities (see module docstring).

    Args:
        uncertain: how uncertain mentions count: ``"positive"`` (default) or ``"negative"``.
        abnormalities: restrict to a subset of :data:`ABNORMALITIES` (names or snake_case columns).

    Example::

        >>> RuleLabeler()("Mild cardiomegaly. No pleural effusion.")["Cardiomegaly"]
        True
    """

    def __init__(self, *, uncertain: Literal["positive", "negative"] = "positive",
                 abnormalities: Sequence[str] | None = None) -> None:
        if uncertain not in ("positive", "negative"):
            raise ValueError(f"uncertain must be 'positive' or 'negative', got {uncertain!r}")
        self.uncertain = uncertain
        names = ABNORMALITIES if abnormalities is None else tuple(abnormality_name(a) for a in abnormalities)
        rules = _default_rules()
        self.abnormalities: tuple[str, ...] = names
        self._rules = {n: rules[n] for n in names}

    def mentions(self, text: str) -> list[Mention]:
        """Every mention of every abnormality in ``text`` with its negation/uncertainty status."""
        if text is None or (isinstance(text, float) and text != text):  # None / NaN → empty report
            return []
        out: list[Mention] = []
        for sentence in _sentences(_normalise(text)):
            pseudo = _spans(_PSEUDO, sentence)
            s = _mask(sentence, pseudo)
            unc_pre = _spans(_UNCERTAIN_PRE, s)
            unc_post = _spans(_UNCERTAIN_POST, s)
            s_neg = _mask(s, unc_pre + unc_post)
            neg_pre = _spans(_NEG_PRE, s_neg)
            neg_post = _spans(_NEG_POST, s_neg)
            for name, rules in self._rules.items():
                seen: set[Span] = set()
                for rule in rules:
                    for span in rule.find(s):  # type: ignore[attr-defined]
                        if span in seen:
                            continue
                        seen.add(span)
                        a, b = span
                        if _in_pre_scope(s, unc_pre, a) or _in_post_scope(s, unc_post, b):
                            status: Status = "uncertain"
                        elif _in_pre_scope(s_neg, neg_pre, a) or _in_post_scope(s_neg, neg_post, b):
                            status = "negative"
                        else:
                            status = "positive"
                        out.append(Mention(name, sentence[a:b], sentence, status))
        return out

    def __call__(self, text: str) -> dict[str, bool]:
        """``{abnormality: present}`` over :attr:`abnormalities` (in that order)."""
        present = {n: False for n in self.abnormalities}
        for m in self.mentions(text):
            if m.status == "positive" or (m.status == "uncertain" and self.uncertain == "positive"):
                present[m.abnormality] = True
        return present


_DEFAULT: dict[str, RuleLabeler] = {}


def label_report(text: str, *, uncertain: Literal["positive", "negative"] = "positive") -> dict[str, bool]:
    """Which of the 18 CT-RATE abnormalities ``text`` reports as present.

    Args:
        text: a free-text radiology report (any length; ``None``/NaN count as an empty report).
        uncertain: ``"positive"`` (default) counts "possible X" / "X cannot be excluded" as present;
            ``"negative"`` counts them as absent.

    Returns:
        ``{name: bool}`` over :data:`ABNORMALITIES`, in that order.

    Example::

        >>> r = label_report("Enlarged heart. No evidence of consolidation or pleural effusion.")
        >>> r["Cardiomegaly"], r["Consolidation"], r["Pleural effusion"]
        (True, False, False)
    """
    if uncertain not in _DEFAULT:
        _DEFAULT[uncertain] = RuleLabeler(uncertain=uncertain)
    return _DEFAULT[uncertain](text)


def label_reports(texts: Iterable[str] | Mapping[str, str], *,
                  labeler: Callable[[str], Mapping[str, bool]] | None = None,
                  columns: Literal["snake", "names"] = "snake"):
    """Label many reports into a 0/1 table.

    Args:
        texts: reports (a sequence, a pandas Series or an ``{id: text}`` mapping; the index/keys
            become the table's index).
        labeler: any callable ``text -> {abnormality: bool}`` (default :func:`label_report`; an
            :class:`~voxelfm.reportgen.llm_labeler.LLMLabeler` works too).
        columns: ``"snake"`` (default) for snake_case columns (``pleural_effusion``), ``"names"``
            for the abnormality names.

    Returns:
        ``pandas.DataFrame`` ``[n_reports, 18]`` of int 0/1.
    """
    import pandas as pd

    lab = labeler or label_report
    if isinstance(texts, Mapping):
        index = list(texts.keys())
        values = list(texts.values())
    elif isinstance(texts, pd.Series):
        index = list(texts.index)
        values = list(texts.values)
    else:
        values = list(texts)
        index = list(range(len(values)))
    rows = []
    for t in values:
        r = lab(t)
        rows.append([int(bool(r.get(n, False))) for n in ABNORMALITIES])
    names = list(FINDING_COLUMNS.values()) if columns == "snake" else list(ABNORMALITIES)
    return pd.DataFrame(rows, index=index, columns=names, dtype=int)
