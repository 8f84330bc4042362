"""edgeexit: robust multi-exit biosignal classifiers, from training to Raspberry Pi-class devices.

Importing the package (or :mod:`edgeexit.cli`, or :mod:`edgeexit.runtime`) never imports torch:
the device side installs only numpy plus an inference engine.
"""

__version__ = "0.1.0"
