"""Only the C extension lives here; everything else is in pyproject.toml.

gateway/detect/_unescape.c is the detector's JSON and percent unescaping in C. It is optional: without a
C compiler the build goes on and gateway.detect.decode uses its pure-Python paths (same results, about
5x slower on those views; `Detector.stats['c_views']` and `bench/run --only detect` say which).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gateway.detect._unescape", ["gateway/detect/_unescape.c"], optional=True)])
