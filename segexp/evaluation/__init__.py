"""Inference, scoring, per-case reports and prediction of files and volumes."""
