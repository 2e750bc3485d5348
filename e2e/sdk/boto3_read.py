"""The application side, as users run it in a pod: plain boto3 with no credential code.

boto3 must find credentials on its own from AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE
(AssumeRoleWithWebIdentity), and the endpoint from AWS_ENDPOINT_URL.
Usage: boto3_read.py BUCKET KEY  -> prints JSON {"body", "arn", "method"}
"""
import json
import sys

import boto3

bucket, key = sys.argv[1:3]
session = boto3.session.Session()
creds = session.get_credentials()
method = creds.method if creds else None
body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
arn = session.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"body": body, "arn": arn, "method": method}))
