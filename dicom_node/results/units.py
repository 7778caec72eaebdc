"""The UCUM units the result objects measure in (one definition for the SR, its lung items and
the Parametric Map)."""

from __future__ import annotations

import highdicom as hd

MILLILITER = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
MILLIMETER = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
HOUNSFIELD = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
