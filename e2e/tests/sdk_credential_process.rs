//! The real AWS CLI with a `credential_process` profile that runs
//! `rolebridge-agent credential-process`, against moto's STS and S3 (the non-Kubernetes path:
//! VMs, Cloud Run, CI runners).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rolebridge_e2e::metadata_emulator::{Config, Emulator};
use rolebridge_e2e::support::{
    BUCKET, CleanAwsHome, OBJECT_BODY, OBJECT_KEY, Peers, ROLE_ARN, assumed_role_arn,
    expect_success, run_with_timeout, sdk_file,
};
use rolebridge_e2e::support::{Moto, agent_bin};

#[test]
fn aws_cli_credential_process_profile_reads_s3_and_caches() {
    let Some(peers) = Peers::get("aws_cli_credential_process_profile_reads_s3_and_caches") else {
        return;
    };
    let moto = Moto::start(&peers);
    let mut setup = std::process::Command::new(&peers.python);
    setup.arg(sdk_file("moto_setup.py")).args([
        moto.endpoint.as_str(),
        BUCKET,
        OBJECT_KEY,
        OBJECT_BODY,
    ]);
    expect_success(
        "moto setup",
        &run_with_timeout(setup, Duration::from_secs(60)),
    );
    let emu = Emulator::start("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();

    let home = CleanAwsHome::new();
    let cache = home.dir.path().join("cache");
    let config = home.dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile rolebridge]\nregion = us-east-1\ncredential_process = {} credential-process --role-arn {ROLE_ARN} --session-name rb-cp\n",
            agent_bin().display()
        ),
    )
    .unwrap();
    let emu_host = emu.host();
    let aws = |args: &[&str]| {
        let mut cmd = home.command(
            &peers.aws,
            &[
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_PROFILE", "rolebridge"),
                ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
                // Read by the credential process the CLI starts.
                ("GCE_METADATA_HOST", emu_host.as_str()),
                ("XDG_CACHE_HOME", cache.to_str().unwrap()),
            ],
        );
        cmd.args(args);
        run_with_timeout(cmd, Duration::from_secs(120))
    };

    let body = expect_success(
        "aws s3 cp",
        &aws(&["s3", "cp", &format!("s3://{BUCKET}/{OBJECT_KEY}"), "-"]),
    );
    assert_eq!(body, OBJECT_BODY);
    assert_eq!(emu.stats().tokens_issued, 1);

    // A second process start is served from the cache: no new token, same identity.
    let id = expect_success(
        "aws sts get-caller-identity",
        &aws(&["sts", "get-caller-identity", "--output", "json"]),
    );
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    assert_eq!(id["Arn"], assumed_role_arn("rb-cp"));
    assert_eq!(
        emu.stats().tokens_issued,
        1,
        "credentials should have come from the cache"
    );

    let files: Vec<_> = std::fs::read_dir(cache.join("rolebridge"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(cached["Version"], 1);
}

#[test]
fn credential_process_output_and_no_cache() {
    let Some(peers) = Peers::get("credential_process_output_and_no_cache") else {
        return;
    };
    let moto = Moto::start(&peers);
    let emu = Emulator::start("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();
    let home = CleanAwsHome::new();
    let emu_host = emu.host();
    let run = || {
        let mut cmd = home.command(
            &agent_bin(),
            &[
                ("GCE_METADATA_HOST", emu_host.as_str()),
                ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ],
        );
        cmd.args(["credential-process", "--no-cache", "--role-arn", ROLE_ARN]);
        run_with_timeout(cmd, Duration::from_secs(60))
    };
    let first: serde_json::Value =
        serde_json::from_str(&expect_success("credential-process", &run())).unwrap();
    for k in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(
            first[k].as_str().is_some_and(|s| !s.is_empty()),
            "{k} missing: {first}"
        );
    }
    assert_eq!(first["Version"], 1);
    expect_success("credential-process", &run());
    assert_eq!(
        emu.stats().tokens_issued,
        2,
        "--no-cache must fetch every time"
    );
    assert!(!home.dir.path().join(".cache/rolebridge").exists());
}
