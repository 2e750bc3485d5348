//! The credentials-endpoint delivery as a bound pod gets it, for the SDK tests: moto as STS
//! and S3 (recording every request), the GKE metadata emulator (with a cluster name), and the
//! agent started with exactly the arguments [`rolebridge_contract::AgentArgs`] renders for a
//! chained binding, plus the pod identity the webhook passes through the downward API. The app
//! environment is built from the same contract ([`rolebridge_contract::credentials_uri`], the
//! auth token file), so the SDKs see only what the webhook injects.
//!
//! Test-only differences from a pod, and why: the auth token file lives in a temporary
//! directory instead of `AUTH_TOKEN_PATH` (`--auth-token-file`), STS is moto or a fault stub
//! (`AWS_ENDPOINT_URL_STS` for the agent, `AWS_ENDPOINT_URL` for the apps' S3/STS calls).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rolebridge_contract::{AgentArgs, CredentialsSpec, Hop, credentials_uri, env, subcommand};

use crate::metadata_emulator::{Config, Emulator};
use crate::sts_stub::StsStub;
use crate::support::{
    AgentProcess, CleanAwsHome, Moto, Peers, agent_bin, agent_command, free_addr, http_get, now_ms,
    run_with_timeout, wait_until,
};

pub const IDENTITY_ROLE: &str = "arn:aws:iam::111111111111:role/ci-identity";
pub const TARGET_ROLE: &str = "arn:aws:iam::222222222222:role/docs-writer";
pub const EXTERNAL_ID: &str = "docs-ext-4711";
pub const BINDING: &str = "docs";
pub const POD_NAME: &str = "publisher-7d9f8-x2kq4";
pub const POD_NAMESPACE: &str = "ci";
pub const POD_UID: &str = "0b7c9a2e-1111-4f7e-9c1a-2b3c4d5e6f70";
pub const SERVICE_ACCOUNT: &str = "publisher";
pub const CLUSTER_NAME: &str = "rolebridge-e2e-cluster";
pub const REGION: &str = "us-east-1";

/// The ARN GetCallerIdentity reports for the chain's final role.
pub fn chained_caller_arn() -> String {
    format!("arn:aws:sts::222222222222:assumed-role/docs-writer/{POD_NAME}")
}

/// Which STS the agent talks to.
pub enum StsPeer {
    Moto,
    /// The fault stub, denying `AssumeRole` into these roles.
    Denying(Vec<String>),
}

pub struct EndpointRig {
    pub peers: Peers,
    pub moto: Moto,
    pub stub: Option<StsStub>,
    pub emulator: Emulator,
    pub dir: tempfile::TempDir,
    pub auth_file: PathBuf,
    pub port: u16,
    pub spec: CredentialsSpec,
    pub agent: AgentProcess,
    pub home: CleanAwsHome,
    /// When the agent was started (Unix ms): credentials cannot have been issued earlier.
    pub started_ms: i64,
}

impl EndpointRig {
    /// The binding as the webhook renders it for the agent.
    pub fn binding(duration_seconds: u32) -> CredentialsSpec {
        CredentialsSpec {
            name: BINDING.into(),
            audience: rolebridge_contract::DEFAULT_AUDIENCE.into(),
            role_arn: IDENTITY_ROLE.into(),
            chain: vec![Hop {
                role_arn: TARGET_ROLE.into(),
                external_id: Some(EXTERNAL_ID.into()),
            }],
            duration_seconds: Some(duration_seconds),
            session_tags: true,
            region: Some(REGION.into()),
            token_file: None,
        }
    }

    /// None (after printing why) when the peers are missing and not required. Waits until the
    /// agent's own probe (`check_command()`) passes, as the pod's startup probe would.
    pub fn start(test: &str, duration_seconds: u32, sts: StsPeer) -> Option<EndpointRig> {
        let peers = Peers::get(test)?;
        let dir = tempfile::tempdir().unwrap();
        let moto = Moto::start_recording(&peers, &dir.path().join("moto-recording.jsonl"));
        moto.put_test_object(&peers);
        let addr: SocketAddr = moto.endpoint.trim_start_matches("http://").parse().unwrap();
        let (status, _) = http_get(addr, "/moto-api/recorder/start-recording", &[]);
        assert_eq!(status, 200);
        let emulator = Emulator::start(
            "127.0.0.1:0".parse().unwrap(),
            Config {
                cluster_name: Some(CLUSTER_NAME.into()),
                ..Config::default()
            },
        )
        .unwrap();
        let stub = match sts {
            StsPeer::Moto => None,
            StsPeer::Denying(roles) => {
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                Some(StsStub::start(&roles))
            }
        };
        let sts_endpoint = stub
            .as_ref()
            .map_or_else(|| moto.endpoint.clone(), StsStub::endpoint);
        let auth_file = dir.path().join("credentials.auth");
        let port = free_addr().port();
        let spec = EndpointRig::binding(duration_seconds);
        let args = AgentArgs {
            tokens: vec![],
            credentials: vec![spec.clone()],
            credentials_port: port,
            google_service_account: None,
        };
        let mut cmd = agent_command(&emulator.host());
        cmd.args(args.args(subcommand::RUN))
            .args(["--auth-token-file", auth_file.to_str().unwrap()])
            .args(["--max-retry-interval", "2s"])
            .env("AWS_ENDPOINT_URL_STS", &sts_endpoint)
            .env(env::POD_NAME, POD_NAME)
            .env(env::POD_NAMESPACE, POD_NAMESPACE)
            .env(env::POD_UID, POD_UID)
            .env(env::SERVICE_ACCOUNT, SERVICE_ACCOUNT);
        let started_ms = now_ms();
        let agent = AgentProcess::spawn(cmd, dir.path());
        let rig = EndpointRig {
            peers,
            moto,
            stub,
            emulator,
            dir,
            auth_file,
            port,
            spec,
            agent,
            home: CleanAwsHome::new(),
            started_ms,
        };
        if rig.stub.is_none() {
            assert!(
                wait_until(Duration::from_secs(20), || rig.probe().status.success()),
                "the agent's probe never passed: {}\n{}",
                String::from_utf8_lossy(&rig.probe().stderr),
                rig.agent.log()
            );
        } else {
            assert!(
                wait_until(Duration::from_secs(10), || rig.auth_file.exists()),
                "no auth token file: {}",
                rig.agent.log()
            );
        }
        Some(rig)
    }

    pub fn agent_args(&self) -> AgentArgs {
        AgentArgs {
            tokens: vec![],
            credentials: vec![self.spec.clone()],
            credentials_port: self.port,
            google_service_account: None,
        }
    }

    /// The pod's probe, as the webhook renders it (with this build's binary).
    pub fn probe(&self) -> std::process::Output {
        let cmd_line = self.agent_args().check_command();
        let mut cmd = Command::new(agent_bin());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(&cmd_line[1..]);
        run_with_timeout(cmd, Duration::from_secs(10))
    }

    /// What the webhook injects into a covered container for this binding, plus moto's
    /// endpoint for the app's own AWS calls.
    pub fn pod_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
                credentials_uri(self.port, BINDING),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
                self.auth_file.display().to_string(),
            ),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_ENDPOINT_URL".into(), self.moto.endpoint.clone()),
        ]
    }

    /// `program` with only the pod environment.
    pub fn pod_command(&self, program: &Path) -> Command {
        let env = self.pod_env();
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.home.command(program, &vars)
    }

    pub fn endpoint_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `GET path` on the endpoint with an optional Authorization header.
    pub fn get(&self, path: &str, authorization: Option<&str>) -> (u16, String) {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http_get(self.endpoint_addr(), path, &headers)
    }

    pub fn auth_token(&self) -> String {
        std::fs::read_to_string(&self.auth_file).unwrap()
    }

    /// The STS calls the agent made, from moto's recorder (or the stub's record).
    pub fn sts_calls(&self) -> Vec<HashMap<String, String>> {
        match &self.stub {
            Some(stub) => stub.requests(),
            None => self
                .moto
                .recorded(&["AssumeRole", "AssumeRoleWithWebIdentity"]),
        }
    }
}
