#!/usr/bin/env python3
"""Readiness probe for scripts/s3: a SigV4-signed PUT, then GET, of one object.

Usage:  python3 signed_put.py ENDPOINT ACCESS_KEY SECRET_KEY BUCKET

Creates BUCKET if it is missing, PUTs a small object, reads it back and deletes it; exit 0
only when all of that worked. Only the Python standard library (the script runs before
the project's virtualenv exists). The secret is never printed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import sys
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

REGION = "us-east-1"


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def request(method: str, endpoint: str, path: str, access: str, secret: str,
            body: bytes = b"") -> tuple[int, bytes]:
    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = urlsplit(endpoint).netloc
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)),
                           "", signed, payload])
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = _sign(_sign(_sign(_sign(("AWS4" + secret).encode(), day), REGION), "s3"),
              "aws4_request")
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(endpoint + path, data=body if method == "PUT" else None,
                                 method=method)
    for name, value in headers.items():
        if name != "host":
            req.add_header(name, value)
    req.add_header("Authorization", f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main() -> int:
    endpoint, access, secret, bucket = sys.argv[1:5]
    status, _ = request("PUT", endpoint, f"/{bucket}", access, secret)
    if status not in (200, 409):  # 409: it exists already
        print(f"create bucket {bucket}: HTTP {status}", file=sys.stderr)
        return 1
    key = f"/{bucket}/probe-{uuid.uuid4().hex}"
    data = b"onceflow readiness probe"
    status, _ = request("PUT", endpoint, key, access, secret, data)
    if status != 200:
        print(f"signed PUT: HTTP {status}", file=sys.stderr)
        return 1
    status, got = request("GET", endpoint, key, access, secret)
    if status != 200 or got != data:
        print(f"GET after PUT: HTTP {status}", file=sys.stderr)
        return 1
    request("DELETE", endpoint, key, access, secret)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:  # not listening yet
        print(f"not ready: {e}", file=sys.stderr)
        sys.exit(1)
