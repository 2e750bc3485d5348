//! The application side for the AWS SDK for Rust: no credential code at all. aws-config's
//! default chain must find the credentials by itself (AWS_ROLE_ARN +
//! AWS_WEB_IDENTITY_TOKEN_FILE, or AWS_CONTAINER_CREDENTIALS_FULL_URI +
//! AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE); the endpoint comes from AWS_ENDPOINT_URL.
//!
//! Usage: sdk-rust-s3-read BUCKET KEY -> prints JSON {"body", "arn", "expiry"}

use anyhow::Context;
use aws_sdk_sts::config::ProvideCredentials as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (bucket, key) = (
        args.next().context("usage: sdk-rust-s3-read BUCKET KEY")?,
        args.next().context("usage: sdk-rust-s3-read BUCKET KEY")?,
    );
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    // Path-style addressing: moto listens on an IP address, where bucket subdomains cannot work.
    let s3_config = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(s3_config);
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .context("GetObject")?;
    let body = object
        .body
        .collect()
        .await
        .context("reading object body")?
        .into_bytes();
    let identity = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .context("GetCallerIdentity")?;
    let creds = config
        .credentials_provider()
        .context("no credentials provider")?
        .provide_credentials()
        .await
        .context("credentials")?;
    let expiry = creds
        .expiry()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "body": String::from_utf8_lossy(&body),
            "arn": identity.arn().unwrap_or_default(),
            "expiry": expiry,
        })
    );
    Ok(())
}
