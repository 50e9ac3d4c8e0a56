"""Regenerate the Python stubs from protos/: `python protos/generate.py`.

A development tool: it lives beside the .proto files, outside the installed package.

The stubs are committed beside the .proto (importable as tollway.v1) and never edited by
hand; tests/test_protos.py fails when they are out of step with the .proto.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.glob("tollway/**/*.proto"))


def generate(out_dir: Path = PROTO_ROOT, root: Path = PROTO_ROOT) -> None:
    from grpc_tools import protoc  # a test/dev dependency, not needed to serve

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(root)) for p in proto_files(root)),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
