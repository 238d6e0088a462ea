"""The optional compiled scanner, gateway/html/_speedups.c; everything else is in pyproject.toml.

Built when a C compiler and the Python headers are there, as aiohttp, PyYAML and msgpack build
theirs: if it cannot be built, the package still installs, with a warning, and runs its
pure-Python scanner (``gateway.html.IMPLEMENTATION`` says which one runs, and the gateway logs
it at start-up). ``GATEWAY_NO_EXTENSIONS=1`` at install time does not even try.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

NO_EXTENSIONS = bool(os.environ.get("GATEWAY_NO_EXTENSIONS"))

SPEEDUPS = Extension("gateway.html._speedups", ["gateway/html/_speedups.c"])

# Whatever a missing or broken toolchain raises (ValueError: some MSVC set-ups).
_BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, ValueError)


class OptionalBuildExt(build_ext):
    """build_ext that warns, instead of failing the installation, when it cannot compile."""

    def run(self) -> None:
        try:
            super().run()
        except _BUILD_ERRORS as error:
            _warn(error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except _BUILD_ERRORS as error:
            _warn(error)


def _warn(error: Exception) -> None:
    sys.stderr.write(
        "\n"
        "WARNING: the compiled HTML scanner (gateway/html/_speedups.c) could not be built:\n"
        f"    {type(error).__name__}: {error}\n"
        "The gateway is installed and works, with its pure-Python scanner, which is several\n"
        "times slower at rewriting HTML. To build it, install a C compiler and the Python\n"
        "headers (Debian: apt-get install gcc python3-dev) and reinstall.\n\n"
    )


setup(
    ext_modules=[] if NO_EXTENSIONS else [SPEEDUPS],
    cmdclass={"build_ext": OptionalBuildExt},
)
