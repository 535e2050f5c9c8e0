"""`python -m qmia_fast` runs the same CLI as the `qmia-fast` script (torchrun uses this form)."""
from .cli import main

main()
