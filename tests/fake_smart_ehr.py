"""A fake SMART-on-FHIR EHR for tests: authorization server and FHIR endpoint on 127.0.0.1.

It is :class:`fake_fhir_server.FakeFhirServer` (the FHIR endpoint under ``/fhir``, which demands
the access token it issues) plus:

  GET  /fhir/.well-known/smart-configuration   SMART 2 discovery (S256 PKCE, jwks_uri, issuer)
  GET  /auth/authorize                          checks client_id, redirect_uri, response_type,
                                                aud, S256 challenge; redirects back with a code
                                                and the state (or an ``error``)
  POST /auth/token                              checks the code (single use), redirect_uri, the
                                                PKCE verifier, client authentication (public
                                                ``client_id`` or a ``private_key_jwt`` assertion);
                                                answers access token, ``patient`` and an RS256
                                                ``id_token`` with ``fhirUser`` and the nonce
  GET  /auth/jwks                               the id_token signing key

``CapabilityStatement`` lists ResearchSubject (search, create, update) and QuestionnaireResponse
(create) unless ``writable=False``; a plain ``POST`` honours ``If-None-Exist``.

Controls: ``token_error`` (an HTTP status the token endpoint answers with), ``id_token_nonce``
(a wrong nonce), ``expire_token()`` (the FHIR endpoint stops accepting the issued token).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_fhir_server import FakeFhirServer, _Outcome, _version_headers
from flask import Flask, Response, has_request_context, jsonify, redirect, request

CLIENT_ID = "fhir-trial-worksheet"
FHIR_USER = "Practitioner/dr-li"


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class FakeSmartEhr(FakeFhirServer):
    """See the module docstring."""

    def __init__(
        self,
        *,
        patient_id: str,
        redirect_uris: tuple[str, ...] = (),
        client_id: str = CLIENT_ID,
        client_jwks: Mapping[str, Any] | None = None,
        fhir_user: str = FHIR_USER,
        writable: bool = True,
    ) -> None:
        self.patient_id = patient_id
        self.redirect_uris = list(redirect_uris)
        self.client_id = client_id
        self.client_jwks = client_jwks  # set: the client must authenticate with private_key_jwt
        self.fhir_user = fhir_user
        self.writable = writable
        self.token_error: int | None = None
        self.id_token_nonce: str | None = None
        self.expires_in = 3600
        self.codes: dict[str, dict[str, Any]] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = "ehr-id-token-1"
        self._auth_lock = threading.Lock()
        super().__init__(token=secrets.token_urlsafe(24))

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:N``."""
        return self.base_url.removesuffix("/fhir")

    def expire_token(self) -> None:
        """Stop accepting the token issued so far (as if it had expired)."""
        self.token = secrets.token_urlsafe(24)

    # --- HTTP -----------------------------------------------------------------------------------
    def _make_app(self) -> Flask:
        app = super()._make_app()

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> Response:
            return jsonify(
                {
                    "issuer": self.origin,
                    "jwks_uri": f"{self.origin}/auth/jwks",
                    "authorization_endpoint": f"{self.origin}/auth/authorize",
                    "token_endpoint": f"{self.origin}/auth/token",
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "grant_types_supported": ["authorization_code"],
                    "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient"],
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                    "capabilities": [
                        "launch-ehr",
                        "launch-standalone",
                        "client-public",
                        "client-confidential-asymmetric",
                        "context-ehr-patient",
                        "sso-openid-connect",
                        "permission-v2",
                    ],
                }
            )

        @app.get("/auth/jwks")
        def jwks() -> Response:
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
            return jsonify({"keys": [{**public, "kid": self._kid, "alg": "RS256", "use": "sig"}]})

        @app.get("/auth/authorize")
        def authorize() -> Any:
            args = {k: request.args.get(k, "") for k in request.args}
            self.authorize_requests.append(args)
            redirect_uri = args.get("redirect_uri", "")
            if args.get("client_id") != self.client_id or redirect_uri not in self.redirect_uris:
                return Response("unknown client or redirect_uri", 400)  # never redirect then
            problem = None
            if args.get("response_type") != "code":
                problem = "unsupported_response_type"
            elif (
                args.get("code_challenge_method") != "S256"
                or not args.get("code_challenge")
                or args.get("aud") != self.base_url
            ):
                problem = "invalid_request"
            if problem:
                query = urlencode({"error": problem, "state": args.get("state", "")})
                return redirect(f"{redirect_uri}?{query}")
            code = secrets.token_urlsafe(16)
            with self._auth_lock:
                self.codes[code] = {**args, "issued": time.time()}
            return redirect(f"{redirect_uri}?{urlencode({'code': code, 'state': args['state']})}")

        @app.post("/auth/token")
        def token() -> Response:
            form = {k: request.form.get(k, "") for k in request.form}
            self.token_requests.append(form)
            if self.token_error:
                return Response(
                    '{"error":"server_error"}', self.token_error, mimetype="application/json"
                )
            with self._auth_lock:
                grant = self.codes.pop(form.get("code", ""), None)
            error = None
            if (
                form.get("grant_type") != "authorization_code"
                or grant is None
                or form.get("redirect_uri") != grant["redirect_uri"]
            ):
                error = "invalid_grant"
            elif _challenge(form.get("code_verifier", "")) != grant["code_challenge"]:
                error = "invalid_grant"  # PKCE failed
            elif not self._client_ok(form):
                error = "invalid_client"
            if error:
                return Response(f'{{"error":"{error}"}}', 400, mimetype="application/json")
            now = int(time.time())
            id_token = jwt.encode(
                {
                    "iss": self.origin,
                    "sub": "dr-li",
                    "aud": self.client_id,
                    "iat": now,
                    "exp": now + 300,
                    "nonce": self.id_token_nonce or grant.get("nonce"),
                    "fhirUser": self.fhir_user,
                },
                self._key,
                algorithm="RS256",
                headers={"kid": self._kid},
            )
            return jsonify(
                {
                    "access_token": self.token,
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                    "scope": grant.get("scope", ""),
                    "patient": self.patient_id,
                    "id_token": id_token,
                }
            )

        return app

    def _client_ok(self, form: Mapping[str, str]) -> bool:
        if self.client_jwks is None:
            return form.get("client_id") == self.client_id
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return False
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            jwk = next(k for k in self.client_jwks["keys"] if k.get("kid") == header.get("kid"))
            key = jwt.PyJWK(dict(jwk), algorithm=header["alg"]).key
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS384", "ES384"],
                audience=f"{self.origin}/auth/token",
                issuer=self.client_id,
            )
        except (jwt.PyJWTError, StopIteration, KeyError):
            return False
        return claims.get("sub") == self.client_id and bool(claims.get("jti"))

    # --- FHIR -----------------------------------------------------------------------------------
    def _capability(self) -> dict[str, Any]:
        statement = super()._capability()
        if self.writable:
            statement["rest"] = [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "ResearchSubject",
                            "interaction": [
                                {"code": c} for c in ("read", "search-type", "create", "update")
                            ],
                        },
                        {
                            "type": "QuestionnaireResponse",
                            "interaction": [{"code": c} for c in ("read", "search-type", "create")],
                        },
                    ],
                }
            ]
        return statement

    def _interaction(
        self,
        store: dict[str, dict[str, dict[str, Any]]],
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        fixed_id: str | None,
    ) -> _Outcome:
        parts = [p for p in path.split("/") if p]
        exist = request.headers.get("If-None-Exist") if has_request_context() else None
        if method == "POST" and len(parts) == 1 and exist:
            matches = self._matches(store, parts[0], parse_qs(exist))
            if matches:
                found = copy.deepcopy(matches[0])
                return _Outcome(200, found, None, None, _version_headers(found))
        return super()._interaction(store, method, path, query, body, fixed_id)
