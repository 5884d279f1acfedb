"""Write service/grpc/inference_descriptor.py: protoc's reading of service/grpc/inference.proto.

    python scripts/protos.py           write it (make protos)
    python scripts/protos.py --check   exit 1 if the committed one differs from protoc's reading

The module holds the file's serialized FileDescriptorProto, from which service.grpc.messages
builds the message classes at import: no generated code, so no pin of the protobuf runtime to
the protoc that wrote it. protoc is grpcio-tools' (a dev dependency).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "service" / "grpc"
PROTO = "inference.proto"
MODULE = PACKAGE / "inference_descriptor.py"
LINE = 96  # characters of one line of the bytes literal, its indent and quotes included


def descriptor() -> bytes:
    """The proto's FileDescriptorProto, serialized, as protoc reads it."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.pb"
        status = protoc.main(["protoc", f"-I{PACKAGE}", f"--descriptor_set_out={out}", PROTO])
        if status != 0:
            raise SystemExit(f"protoc failed on {PACKAGE / PROTO} (exit {status})")
        found = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return found.file[0].SerializeToString(deterministic=True)


def _escaped(byte: int) -> str:
    char = chr(byte)
    return char if 32 <= byte < 127 and char not in '"\\' else f"\\x{byte:02x}"


def render(serialized: bytes) -> str:
    """The module: the bytes as a parenthesised run of double-quoted literals."""
    lines, line = [], ""
    for byte in serialized:
        piece = _escaped(byte)
        if len(line) + len(piece) > LINE - 7:  # '    b"' and '"'
            lines.append(f'    b"{line}"')
            line = ""
        line += piece
    if line:
        lines.append(f'    b"{line}"')
    body = "\n".join(lines)
    return (
        f'"""protoc\'s reading of {PROTO} (its FileDescriptorProto, serialized).\n\n'
        "Written by `make protos` (scripts/protos.py); do not edit.\n"
        '"""\n\n'
        f"SERIALIZED = (\n{body}\n)\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/protos.py", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed one differs")
    args = parser.parse_args(argv)
    wanted = render(descriptor())
    current = MODULE.read_text(encoding="utf-8") if MODULE.exists() else ""
    where = MODULE.relative_to(ROOT)
    if current == wanted:
        print(f"{where}: up to date")
        return 0
    if args.check:
        print(
            f"error: {where} differs from protoc's reading of {PROTO}; run `make protos` and "
            "commit the result",
            file=sys.stderr,
        )
        return 1
    MODULE.write_text(wanted, encoding="utf-8")
    print(f"{where}: rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
