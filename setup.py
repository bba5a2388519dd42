"""Build the Cython sleeve pump `meshnet._fastpath`.

Metadata lives in pyproject.toml; this file only declares the extension: one module,
`meshnet/_fastpath.pyx`, which includes its parts from `meshnet/_fastpath/*.pxi`.
Its C constants are generated first from the Python ones (`meshnet/dataplane/pxi.py`
says why generated and not copied). MESHNET_PUREPYTHON=1 skips all of it: the router
then runs the pure-Python twin of the pump and says so loudly in `meshnet status`.
"""
import os
import sys

from setuptools import setup

if not sys.platform.startswith("linux"):
    sys.exit("meshnet needs Linux (TAP devices, netlink, network namespaces)")

ext_modules = []
if os.environ.get("MESHNET_PUREPYTHON") != "1":
    from Cython.Build import cythonize
    from setuptools import Extension

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)  # the package is not installed yet; pxi needs only stdlib
    from meshnet.dataplane import pxi

    pxi.write(os.path.join(here, "meshnet", "_fastpath", "constants.pxi"))
    ext_modules = cythonize(
        [
            Extension(
                "meshnet._fastpath",
                ["meshnet/_fastpath.pyx"],
                extra_compile_args=["-O2"],
                libraries=["crypto"],  # libcrypto's EVP AES-256-GCM for the sleeve AEAD
            )
        ],
        compiler_directives={"language_level": 3},
    )

setup(ext_modules=ext_modules)
