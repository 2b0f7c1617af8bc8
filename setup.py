"""Build script: the package, the Triton kernels (as ``emofast.triton_kernels``) and the C++ CPU kernels.

Set ``EMOFAST_NO_CPP=1`` to skip the C++ extension. A missing compiler or a failed build only warns:
emofast then runs on its torch reference kernels.
"""

import os
import sys

from setuptools import find_namespace_packages, setup
from setuptools.command.build_ext import build_ext

ext_modules = []
if os.environ.get("EMOFAST_NO_CPP", "") not in ("1", "true", "yes"):
    try:
        from pybind11.setup_helpers import Pybind11Extension

        openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
        ext_modules.append(
            Pybind11Extension(
                "emofast._C",
                ["csrc/bindings.cpp", "csrc/select_reduce.cpp"],
                include_dirs=["csrc"],
                cxx_std=17,
                extra_compile_args=["-O3", *openmp],
                extra_link_args=openmp,
            )
        )
    except ImportError:  # pragma: no cover - pybind11 is in build-system.requires
        print("warning: pybind11 not found, building emofast without its C++ kernels", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Build the C++ kernels if possible; warn and carry on (torch fallback) if not."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure must not break the install
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(
            f"warning: emofast C++ kernels were not built ({exc}); the torch reference kernels will be used. "
            "Install a C++ compiler (g++) to build them, or set EMOFAST_NO_CPP=1 to silence this.",
            file=sys.stderr,
        )


setup(
    packages=[
        "emofast",
        "emofast.backends",
        "emofast.capture",
        "emofast.kernels",
        "emofast.probe",
        "emofast.data",
        "emofast.commands",
        "emofast.report",
        "emofast.generation",
        "emofast.data.datasets",
        # the data folders are plain directories; listing them keeps setuptools from warning about them
        *find_namespace_packages(include=["emofast.data.datasets.*"]),
        "emofast.triton_kernels",
    ],
    package_dir={"emofast.triton_kernels": "triton_kernels"},
    package_data={
        "emofast.data.datasets": ["*/*.json", "*/*.jsonl", "*/*.md"],
        "emofast.data.datasets.emotions": ["*/*/*.jsonl"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
)
