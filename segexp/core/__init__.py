"""The ground floor: user-facing errors (SegexpError and its kinds) and file helpers (atomic writes,
staging folders, writable-folder checks). Imports no other segexp layer."""
