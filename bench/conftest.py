import os

# The triton backend on CPU runs through the interpreter (set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")
