#!/usr/bin/env python3
"""Demo credentials for `make up`, made fresh on every start and never committed:
an RSA key (openssl), its JWKS, and RS256 tokens signed with it; and an API key with the
keys file that holds its SHA-256 (the entry `tollgate-ext-authz hash-key` would print).

  demo_token.py init DIR            writes DIR/demo-key.pem, DIR/demo-jwks.json,
                                    DIR/demo-keys.yaml and DIR/demo-api-key
  demo_token.py mint DIR SUB TIER   prints a token for consumer SUB in TIER
  demo_token.py api-key DIR         prints the demo API key (consumer partner-acme, premium)
"""
import base64
import hashlib
import json
import secrets
import os
import subprocess
import sys
import time

ISSUER = "https://id.tollgate.example"
AUDIENCE = "tollgate-demo"
KID = "demo-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def init(directory: str) -> None:
    key = os.path.join(directory, "demo-key.pem")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    modulus = subprocess.run(
        ["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True, capture_output=True, text=True
    ).stdout.strip().split("=", 1)[1]
    jwks = {"keys": [{
        "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
        "n": b64url(bytes.fromhex(modulus)), "e": b64url((65537).to_bytes(3, "big")),
    }]}
    with open(os.path.join(directory, "demo-jwks.json"), "w") as out:
        json.dump(jwks, out)
    api_key = "tgk_" + secrets.token_urlsafe(24)
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    with open(os.path.join(directory, "demo-keys.yaml"), "w") as out:
        out.write(f'keys:\n  - {{consumer: "partner-acme", tier: "premium", sha256: "{digest}"}}\n')
    # The key itself is kept only so the demo can show it; a real keys file never needs it.
    with open(os.path.join(directory, "demo-api-key"), "w") as out:
        out.write(api_key + "\n")


def api_key(directory: str) -> None:
    with open(os.path.join(directory, "demo-api-key")) as key:
        print(key.read().strip())


def mint(directory: str, sub: str, tier: str) -> None:
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": KID}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tier": tier,
              "scope": "invoices:read invoices:write", "iat": now, "exp": now + 3600}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", os.path.join(directory, "demo-key.pem")],
        input=signing_input.encode(), check=True, capture_output=True,
    ).stdout
    print(f"{signing_input}.{b64url(signature)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["init"] and len(sys.argv) == 3:
        init(sys.argv[2])
    elif sys.argv[1:2] == ["mint"] and len(sys.argv) == 5:
        mint(*sys.argv[2:5])
    elif sys.argv[1:2] == ["api-key"] and len(sys.argv) == 3:
        api_key(sys.argv[2])
    else:
        sys.exit(__doc__)
