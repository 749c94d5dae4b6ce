#!/usr/bin/env python3
"""Signs requests with Twilio's own validator, for tests/twilio_signatures.rs.

Reads a JSON list of cases from stdin, each {"token": ..., "url": ..., "params": [[name, value],
...]} (names may repeat), and prints a JSON list of the X-Twilio-Signature each would carry, as
computed by the official `twilio` package (twilio.request_validator.RequestValidator). Prints
{"error": ...} and exits 3 when the package is missing.
"""
import json
import sys

try:
    import twilio
    from twilio.request_validator import RequestValidator
except ImportError as e:  # the test decides whether a missing package is a failure
    print(json.dumps({"error": f"the twilio package is not installed: {e}"}))
    sys.exit(3)


class Multi(dict):
    """Repeated form fields, like a web framework's MultiDict (the validator calls getall)."""

    def getall(self, name):
        return self[name]


def signature(case):
    params = Multi()
    for name, value in case["params"]:
        params.setdefault(name, []).append(value)
    validator = RequestValidator(case["token"])
    sig = validator.compute_signature(case["url"], params)
    # The package's own check agrees with what it computed (with and without the port).
    assert validator.validate(case["url"], params, sig), case
    return sig


cases = json.load(sys.stdin)
print(json.dumps({"twilio": twilio.__version__, "signatures": [signature(c) for c in cases]}))
