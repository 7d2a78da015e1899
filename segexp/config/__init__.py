"""The bottom layer: user-facing errors, the typed config schema and its start-up rules, output safety."""
