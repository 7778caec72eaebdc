"""Alembic migrations of the index schema (dicom_node/schema.py runs them)."""
