"""Privacy: de-identification by PS3.15 Annex E, pseudonyms from a site key, and the mapping of
results that come back for a de-identified study to the original patient and study."""
