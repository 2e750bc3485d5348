// The application side for the AWS SDK for JavaScript v3: no credential code at all. The
// default provider chain must find AWS_CONTAINER_CREDENTIALS_FULL_URI +
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; the endpoint comes from AWS_ENDPOINT_URL.
// Usage: node read.mjs BUCKET KEY -> JSON {"body", "arn", "expiry", "accessKeyId"}; on failure the
// SDK's error (name, message, and any Code/Message it carries) on stderr, exit 1.
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";

const [bucket, key] = process.argv.slice(2);
try {
  // Path-style: moto listens on an IP address.
  const s3 = new S3Client({ forcePathStyle: true });
  const object = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const body = await object.Body.transformToString();
  const sts = new STSClient({});
  const identity = await sts.send(new GetCallerIdentityCommand({}));
  const creds = await sts.config.credentials();
  console.log(JSON.stringify({
    body,
    arn: identity.Arn,
    expiry: creds.expiration ? creds.expiration.getTime() / 1000 : null,
    accessKeyId: creds.accessKeyId,
  }));
} catch (e) {
  console.error(JSON.stringify({ name: e.name, message: e.message, Code: e.Code, Message: e.Message }));
  process.exit(1);
}
