"""The application side for the credentials endpoint, as users run it in a pod: plain boto3
with no credential code. boto3 must find credentials on its own from
AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.

Usage:
  boto3_endpoint.py read BUCKET KEY -> JSON {"body", "arn", "method", "expiry", "access_key"}
  boto3_endpoint.py loop SECONDS    -> JSON {"calls", "errors", "keys", "arns"}: GetCallerIdentity
                                       every 0.25 s; the keys the SDK used, in order
  boto3_endpoint.py identity        -> the caller ARN, or the SDK's error on stderr (exit 1)
"""
import json
import sys
import time

import boto3

mode = sys.argv[1]
session = boto3.session.Session()
if mode == "read":
    bucket, key = sys.argv[2:4]
    body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    arn = session.client("sts").get_caller_identity()["Arn"]
    creds = session.get_credentials()
    print(json.dumps({
        "body": body,
        "arn": arn,
        "method": creds.method,
        # botocore's own view of when its credentials expire.
        "expiry": creds._expiry_time.timestamp(),
        "access_key": creds.get_frozen_credentials().access_key,
    }))
elif mode == "loop":
    end = time.time() + float(sys.argv[2])
    sts = session.client("sts")
    creds = session.get_credentials()
    calls, errors, keys, arns = 0, [], [], set()
    while time.time() < end:
        try:
            arns.add(sts.get_caller_identity()["Arn"])
            key = creds.get_frozen_credentials().access_key
            if not keys or keys[-1] != key:
                keys.append(key)
        except Exception as e:  # the test asserts there are none
            errors.append(repr(e))
        calls += 1
        time.sleep(0.25)
    print(json.dumps({"calls": calls, "errors": errors, "keys": keys, "arns": sorted(arns)}))
elif mode == "identity":
    try:
        print(session.client("sts").get_caller_identity()["Arn"])
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
else:
    sys.exit(f"unknown mode {mode}")
