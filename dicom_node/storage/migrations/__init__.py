"""Alembic migrations of the index schema (dicom_node/storage/schema.py runs them)."""
