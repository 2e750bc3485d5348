"""Test rig setup, not the system under test: create a bucket and an object in moto.

Usage: moto_setup.py ENDPOINT BUCKET KEY BODY
Uses throwaway static keys because moto needs some signature; the SDKs under test never see them.
"""
import sys

import boto3

endpoint, bucket, key, body = sys.argv[1:5]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="rig-setup",
    aws_secret_access_key="rig-setup",
)
s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
print("created", bucket, key)
