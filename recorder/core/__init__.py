"""Pure decisions of the recorder: no I/O library is imported here (an import contract checks)."""
