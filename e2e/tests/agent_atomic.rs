//! A reader hammering the token file while the agent rewrites it never sees partial content.

use std::time::{Duration, Instant};

use rolebridge_e2e::metadata_emulator::{Config, Emulator};
use rolebridge_e2e::support::{claims, spawn_run, wait_until};

#[test]
fn reader_never_sees_a_partial_token_while_the_agent_rewrites_it() {
    // 4 s tokens refreshed at 30 % ± 10 % of their life: a rewrite about every 1.2 s, while each
    // token keeps ≥ 2.4 s of validity, so a loaded machine delaying one refresh does not let
    // the token expire (the agent then removes it, correctly) in the middle of the reads.
    let emu = Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            lifetime: Duration::from_secs(4),
            ..Config::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let agent = spawn_run(
        &emu.host(),
        dir.path(),
        &path,
        &["--refresh-fraction", "0.3"],
    );
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{}",
        agent.log()
    );

    let expected_len = std::fs::read(&path).unwrap().len();
    let mut reads = 0u64;
    let mut distinct = std::collections::HashSet::new();
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        let bytes =
            std::fs::read(&path).expect("the file must never vanish while tokens are valid");
        reads += 1;
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        let c = claims(text)
            .unwrap_or_else(|| panic!("partial or corrupt token read ({} bytes)", bytes.len()));
        assert_eq!(c["aud"], "sts.amazonaws.com");
        // Same claim sizes and a 2048-bit signature: every complete token has the same length.
        assert_eq!(bytes.len(), expected_len, "torn read");
        distinct.insert(bytes);
    }
    assert!(
        distinct.len() >= 3,
        "only {} rewrites observed in {reads} reads",
        distinct.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}
