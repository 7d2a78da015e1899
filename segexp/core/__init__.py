"""The ground floor: user-facing errors (SegexpError and its kinds), file helpers (atomic writes,
staging folders, writable-folder checks) and the note that a stop was requested (Ctrl-C, SIGTERM).
Imports no other segexp layer."""
