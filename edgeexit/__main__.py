"""``python -m edgeexit`` (and ``torchrun -m edgeexit``) runs the command line."""

from edgeexit.cli import main

main(prog_name="edgeexit")
