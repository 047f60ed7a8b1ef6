"""The reference design's curl session (steps 1-4), run verbatim but for host and port."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import Target
from tests.support.images import jpeg


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-k", *args], capture_output=True, check=True, timeout=60)


def test_reference_curl_session_runs_verbatim(target: Target, tmp_path: Path) -> None:
    host = target.base_url
    (tmp_path / "optimize.jpg").write_bytes(jpeg(900, 600, quality=95))

    # 1. the token, printed bare
    token = curl(
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"login":"bob", "password":"qwe123"}',
        f"{host}/v1/token",
    ).stdout.decode()
    assert token.count(".") == 2 and " " not in token and "{" not in token

    # 2. the upload, with the reference design's odd Content-Type
    out = curl(
        "-X",
        "POST",
        "-H",
        f"Authorization: Bearer {token}",
        "-H",
        "Content-Type: octet/stream",
        "--data-binary",
        f"@{tmp_path / 'optimize.jpg'}",
        f"{host}/v1/upload",
    ).stdout
    filename = json.loads(out)["filename"]
    assert filename.endswith(".jpg")

    # 3. public download, and 404 for a name that does not exist
    public = tmp_path / "public.jpg"
    curl("-sS", "-o", str(public), "-w", "%{http_code}", f"{host}/images/{filename}")
    assert public.read_bytes()[:3] == b"\xff\xd8\xff"
    missing = curl(
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{host}/images/a8fc5a9a5-3343-4e93-8d05-699946c8f715.jpg",
    ).stdout
    assert missing == b"404"

    # 4. the owner's route gives the same bytes
    owned = tmp_path / "owned.jpg"
    curl(
        "-sS",
        "-H",
        f"Authorization: Bearer {token}",
        "-o",
        str(owned),
        f"{host}/v1/user/{filename}",
    )
    assert owned.read_bytes() == public.read_bytes()
