//! The real AWS CLI with a `credential_process` profile that runs
//! `rolebridge-agent credential-process`, against moto's STS and S3 (the non-Kubernetes path:
//! VMs, Cloud Run, CI runners), with a Google ID token from the metadata server or, on a
//! runner that is not on Google Cloud, a CI system's ID token from a file (`--token-file`).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use rolebridge_e2e::metadata_emulator::{Config, Emulator};
use rolebridge_e2e::support::{
    BUCKET, CleanAwsHome, OBJECT_BODY, OBJECT_KEY, Peers, ROLE_ARN, assumed_role_arn,
    aws_cli_reads_s3_as, expect_success, http_get, now_ms, run_with_timeout, sdk_file,
    unsigned_jwt,
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

/// A GitLab CI job's ID token (`id_tokens` with `aud: sts.amazonaws.com`), as the job writes
/// it to a file for tools that read one.
fn gitlab_id_token(git_ref: &str) -> String {
    let now = now_ms() / 1000;
    unsigned_jwt(&serde_json::json!({
        "iss": "https://gitlab.example.com",
        "sub": format!("project_path:platform/docs:ref_type:branch:ref:{git_ref}"),
        "aud": "sts.amazonaws.com",
        "project_path": "platform/docs",
        "ref": git_ref,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }))
}

#[test]
fn aws_cli_credential_process_with_a_ci_token_file_walks_the_chain() {
    const IDENTITY: &str = "arn:aws:iam::111111111111:role/ci-identity";
    const TARGET: &str = "arn:aws:iam::222222222222:role/docs-writer";
    const EXTERNAL_ID: &str = "docs-ext-4711";
    let Some(peers) = Peers::get("aws_cli_credential_process_with_a_ci_token_file_walks_the_chain")
    else {
        return;
    };
    let home = CleanAwsHome::new();
    let moto = Moto::start_recording(&peers, &home.dir.path().join("moto.jsonl"));
    moto.put_test_object(&peers);
    let moto_addr = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    assert_eq!(
        http_get(moto_addr, "/moto-api/recorder/start-recording", &[]).0,
        200
    );
    // A metadata server is reachable, and must not be asked: the token is the file's.
    let emu = Emulator::start("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();
    let token_file = home.dir.path().join("gitlab-id-token");
    let token = gitlab_id_token("main");
    std::fs::write(&token_file, &token).unwrap();

    let cache = home.dir.path().join("cache");
    let config = home.dir.path().join("config");
    let chain = format!(
        "--role-arn {IDENTITY} --chain-role-arn {TARGET} --chain-external-id {EXTERNAL_ID} \
         --duration-seconds 900 --session-name rb-ci"
    );
    std::fs::write(
        &config,
        format!(
            "[profile ci]\nregion = us-east-1\ncredential_process = {} credential-process --token-file {} {chain}\n",
            agent_bin().display(),
            token_file.display()
        ),
    )
    .unwrap();
    let emu_host = emu.host();
    let env = [
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_PROFILE", "ci"),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("GCE_METADATA_HOST", emu_host.as_str()),
        ("XDG_CACHE_HOME", cache.to_str().unwrap()),
    ];
    let aws = home.runner(&peers.aws, &env);
    aws_cli_reads_s3_as(
        &aws,
        "arn:aws:sts::222222222222:assumed-role/docs-writer/rb-ci",
    );

    // What the agent sent STS, from moto's record: the file's token on the web identity hop,
    // then the chained hop with its external ID and duration; the second CLI run was served
    // from the cache.
    let calls = moto.recorded(&["AssumeRoleWithWebIdentity", "AssumeRole"]);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(calls[0]["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(calls[0]["RoleArn"], IDENTITY);
    assert_eq!(calls[0]["WebIdentityToken"], token);
    assert_eq!(calls[1]["Action"], "AssumeRole");
    assert_eq!(calls[1]["RoleArn"], TARGET);
    assert_eq!(calls[1]["ExternalId"], EXTERNAL_ID);
    assert_eq!(calls[1]["DurationSeconds"], "900");
    assert_eq!(emu.stats().identity_requests, 0);

    // Another job's token (another subject) never gets this job's cached credentials, and a
    // metadata-server run of the same chain has its own cache entry too.
    std::fs::write(&token_file, gitlab_id_token("feature")).unwrap();
    expect_success(
        "aws sts get-caller-identity",
        &aws(&["sts", "get-caller-identity", "--output", "json"]),
    );
    assert_eq!(
        moto.recorded(&["AssumeRoleWithWebIdentity"]).len(),
        2,
        "a new subject means new credentials"
    );
    let mut cmd = home.command(&agent_bin(), &env);
    cmd.arg("credential-process").args(chain.split_whitespace());
    expect_success(
        "credential-process from the metadata server",
        &run_with_timeout(cmd, Duration::from_secs(60)),
    );
    assert_eq!(emu.stats().tokens_issued, 1);
    let files = std::fs::read_dir(cache.join("rolebridge")).unwrap().count();
    assert_eq!(files, 3, "one cache entry per token source and subject");
}
