//! `flags --json` (hidden): the command line as data ([`rolebridge_contract::introspect`]), so
//! that checks compare against the parser itself rather than a scrape of the source.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, FlagsArgs};

use super::CmdError;

pub fn run(_: FlagsArgs) -> Result<ExitCode, CmdError> {
    println!("{}", serde_json::to_string_pretty(&flags_json())?);
    Ok(ExitCode::SUCCESS)
}

/// The agent's whole command line, hidden subcommands included.
pub fn flags_json() -> serde_json::Value {
    rolebridge_contract::introspect::flags_json(&Cli::command())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rolebridge_contract::{flag, introspect, subcommand};
    use serde_json::Value;

    /// The entry of `v[list]` whose `key` is `value`.
    fn entry<'a>(v: &'a Value, list: &str, key: &str, value: &str) -> &'a Value {
        let mut entries = v[list].as_array().unwrap().iter();
        entries
            .find(|e| e[key] == value)
            .unwrap_or_else(|| panic!("no {key} {value} in {list} of {v:#}"))
    }

    fn subcommand<'a>(v: &'a Value, name: &str) -> &'a Value {
        entry(v, "subcommands", "name", name)
    }

    fn longs(sub: &Value) -> Vec<&str> {
        let flags = sub["flags"].as_array().unwrap();
        flags.iter().filter_map(|f| f["long"].as_str()).collect()
    }

    /// Every subcommand and flag the webhook renders is declared by the parser under the
    /// contract's name, as `flags --json` shows it.
    #[test]
    fn the_parser_declares_every_name_the_webhook_renders() {
        let v = flags_json();
        assert_eq!(v["name"], "rolebridge-agent");
        let rendered = [
            (
                subcommand::RUN,
                &[
                    flag::name::TOKEN,
                    flag::name::CREDENTIALS,
                    flag::name::CREDENTIALS_PORT,
                    flag::name::GOOGLE_SERVICE_ACCOUNT,
                ][..],
            ),
            (
                subcommand::INIT,
                &[
                    flag::name::TOKEN,
                    flag::name::CREDENTIALS,
                    flag::name::CREDENTIALS_PORT,
                    flag::name::GOOGLE_SERVICE_ACCOUNT,
                ][..],
            ),
            (
                subcommand::CHECK,
                &[
                    flag::name::TOKEN,
                    flag::name::CREDENTIALS_PORT,
                    flag::name::WAIT,
                ][..],
            ),
        ];
        for (name, flags) in rendered {
            let have = longs(subcommand(&v, name));
            for flag in flags {
                assert!(have.contains(flag), "{name} lacks --{flag}: {have:?}");
            }
        }
        let run = subcommand(&v, subcommand::RUN);
        let port = entry(run, "flags", "long", flag::name::CREDENTIALS_PORT);
        assert_eq!(
            port["default"],
            rolebridge_contract::DEFAULT_CREDENTIALS_PORT.to_string()
        );
        assert_eq!(port["env"], "ROLEBRIDGE_CREDENTIALS_PORT");
        // Hidden from help, but part of the command line it describes.
        let own = subcommand(&v, introspect::SUBCOMMAND);
        assert!(longs(own).contains(&introspect::JSON));
    }

    /// Except `--token`, whose variable (`ROLEBRIDGE_TOKENS`, a comma-separated list) is read
    /// outside clap so that a flag's audience is never split at a comma, and the introspection
    /// switch, which configures nothing.
    #[test]
    fn every_other_flag_has_a_variable() {
        fn walk(v: &Value, out: &mut Vec<String>) {
            for f in v["flags"].as_array().unwrap() {
                let exempt = [flag::name::TOKEN, introspect::JSON];
                if f["env"].is_null() && !exempt.iter().any(|e| f["long"] == *e) {
                    out.push(format!("{} --{}", v["name"], f["long"]));
                }
            }
            for s in v["subcommands"].as_array().unwrap() {
                walk(s, out);
            }
        }
        let mut missing = Vec::new();
        walk(&flags_json(), &mut missing);
        assert_eq!(missing, Vec::<String>::new());
    }
}
