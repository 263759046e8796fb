//! The reference of every setting (docs/configuration.md), rendered from the command line's own
//! definitions (`config::Cli` and the `*Args` structs it flattens) so that the two cannot drift:
//! `mlflow-artifact-proxy config-reference` prints it, and a test fails when the committed file
//! differs. The few variables read outside clap are listed once, in [`OUTSIDE_CLAP`].

use std::fmt::Write as _;

use clap::CommandFactory;

use crate::config::Cli;

/// How to bring docs/configuration.md up to date (the test's failure message says it too).
pub const REGENERATE: &str = "scripts/gen-config-reference";

/// A variable the binary reads without clap.
pub struct OutsideClap {
    pub name: &'static str,
    /// The commands that read it.
    pub read_by: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every environment variable the binary reads that is not a clap setting.
pub const OUTSIDE_CLAP: &[OutsideClap] = &[
    OutsideClap {
        name: "RUST_LOG",
        read_by: "every command",
        default: "`info`",
        meaning: "Which log lines are written (tracing's filter syntax: `info`, `debug`, \
                  `mlflow_artifact_proxy=debug,info`); the format is `--log-format`.",
    },
    OutsideClap {
        name: "SSL_CERT_FILE",
        read_by: "serve, ensure-bucket, sweep-uploads, gc",
        default: "(none)",
        meaning: "With `SSL_CERT_DIR`, the system's store of certificate authorities as OpenSSL \
                  finds it, trusted for an https:// S3 endpoint when `AWS_CA_BUNDLE` is unset. \
                  With `AWS_CA_BUNDLE` set the proxy starts itself again with `SSL_CERT_FILE` set \
                  to the bundle, so that rust-s3's client (list, delete, multipart control calls) \
                  trusts it too.",
    },
    OutsideClap {
        name: "SSL_CERT_DIR",
        read_by: "serve, ensure-bucket, sweep-uploads, gc",
        default: "(none)",
        meaning: "A folder of trusted certificate authorities (OpenSSL's layout), read with \
                  `SSL_CERT_FILE` when `AWS_CA_BUNDLE` is unset.",
    },
];

/// One setting: a variable (or, for flags without one, a flag) and what each command says of it.
struct Setting {
    /// The variable, or the flag when there is none.
    key: String,
    env: Option<String>,
    flag: String,
    takes_value: bool,
    values: Vec<String>,
    /// (command, default, help), in the order the commands are defined.
    uses: Vec<(String, String, String)>,
}

/// docs/configuration.md, as this binary defines its settings. Its section titles and columns are
/// read by scripts/tests/configuration_reference.py (compose and the chart checked against it).
pub fn render() -> String {
    render_command(Cli::command())
}

/// The reference of any command line shaped as [`Cli`] (subcommands holding the settings).
fn render_command(mut cli: clap::Command) -> String {
    cli.build();
    // The hidden ones (this one) and clap's own `help` are no settings' readers.
    let commands: Vec<&clap::Command> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .collect();
    let mut settings: Vec<Setting> = Vec::new();
    for command in &commands {
        for arg in command.get_arguments() {
            if arg.is_hide_set()
                || arg.is_positional()
                || matches!(arg.get_id().as_str(), "help" | "version")
            {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let flag = format!("--{}", arg.get_long().unwrap_or(arg.get_id().as_str()));
            let default = default_of(arg);
            let help = help_of(arg);
            let name = command.get_name().to_owned();
            let key = env.clone().unwrap_or_else(|| flag.clone());
            match settings.iter_mut().find(|s| s.key == key) {
                Some(setting) => setting.uses.push((name, default, help)),
                None => settings.push(Setting {
                    key,
                    env,
                    flag,
                    takes_value: arg.get_action().takes_values(),
                    values: arg
                        .get_possible_values()
                        .iter()
                        .filter(|v| !v.is_hide_set())
                        .map(|v| format!("`{}`", v.get_name()))
                        .collect(),
                    uses: vec![(name, default, help)],
                }),
            }
        }
    }

    let mut out = String::new();
    out.push_str(HEADER);
    out.push_str("\n## Commands\n\n| command | what it does |\n|---|---|\n");
    for command in &commands {
        let about = sentence(command.get_long_about().or(command.get_about()));
        let name = if command.get_name() == "serve" {
            "`serve` (the default)".to_owned()
        } else {
            format!("`{}`", command.get_name())
        };
        let _ = writeln!(out, "| {name} | {about} |");
    }

    out.push_str("\n## Environment variables and flags\n\n");
    out.push_str("In the order `serve` defines them, then those of the other commands.\n\n");
    out.push_str("| variable | flag | default | read by | meaning |\n|---|---|---|---|---|\n");
    for setting in settings.iter().filter(|s| s.env.is_some()) {
        row(&mut out, setting);
    }
    out.push_str("\n## Flags without a variable\n\n| flag | default | read by | meaning |\n|---|---|---|---|\n");
    for setting in settings.iter().filter(|s| s.env.is_none()) {
        row(&mut out, setting);
    }

    out.push_str("\n## Variables read outside the flags\n\n| variable | default | read by | meaning |\n|---|---|---|---|\n");
    for var in OUTSIDE_CLAP {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            var.name,
            var.default,
            var.read_by,
            cell(var.meaning)
        );
    }
    out
}

const HEADER: &str = "\
# Configuration reference

<!-- Generated by `mlflow-artifact-proxy config-reference` from the flags' definitions; do not edit.
     Regenerate with scripts/gen-config-reference (a cargo test fails while this file differs). -->

Every setting of `mlflow-artifact-proxy` is a flag, and nearly every flag has an environment variable:
the same ones MLflow and the AWS tools read where they exist, so one `.env` (compose/.env.example)
drives MLflow and the proxy. A flag given on the command line wins over its variable. `serve` is the
default command: `mlflow-artifact-proxy --listen …` is `mlflow-artifact-proxy serve --listen …`.
`mlflow-artifact-proxy <command> --help` says the same as this page. How to run the binary by hand:
[proxy.md](proxy.md).
";

/// Cells of one table row; a setting read differently by two commands shows each one's word.
fn row(out: &mut String, setting: &Setting) {
    let read_by: Vec<&str> = setting.uses.iter().map(|(c, _, _)| c.as_str()).collect();
    let same_default = setting.uses.iter().all(|(_, d, _)| *d == setting.uses[0].1);
    let default = if same_default {
        setting.uses[0].1.clone()
    } else {
        setting
            .uses
            .iter()
            .map(|(c, d, _)| format!("{d} ({c})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same_help = setting.uses.iter().all(|(_, _, h)| *h == setting.uses[0].2);
    let mut meaning = if same_help {
        setting.uses[0].2.clone()
    } else {
        setting
            .uses
            .iter()
            .map(|(c, _, h)| format!("{c}: {h}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !setting.takes_value {
        meaning.push_str(" A switch: no value.");
    } else if !setting.values.is_empty() {
        let _ = write!(meaning, " Values: {}.", setting.values.join(", "));
    }
    let lead = match &setting.env {
        Some(env) => format!("`{env}` | `{}`", setting.flag),
        None => format!("`{}`", setting.flag),
    };
    let _ = writeln!(
        out,
        "| {lead} | {default} | {} | {} |",
        read_by.join(", "),
        cell(&meaning)
    );
}

fn default_of(arg: &clap::Arg) -> String {
    if !arg.get_action().takes_values() {
        return "off".to_owned();
    }
    match arg.get_default_values() {
        [] => "(none)".to_owned(),
        values => values
            .iter()
            .map(|v| match v.to_string_lossy() {
                v if v.is_empty() => "`\"\"` (empty)".to_owned(),
                v => format!("`{v}`"),
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn help_of(arg: &clap::Arg) -> String {
    sentence(arg.get_long_help().or(arg.get_help()))
}

/// A help text as one sentence: clap drops the final period of a one-paragraph doc comment.
fn sentence(text: Option<&clap::builder::StyledStr>) -> String {
    let text = cell(&text.map(|t| t.to_string()).unwrap_or_default());
    if text.is_empty() || text.ends_with(['.', '!', '?']) {
        text
    } else {
        text + "."
    }
}

/// Text fit for one table cell: one line, no column breaks.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Every variable the reference names (clap's and [`OUTSIDE_CLAP`]).
pub fn variables() -> Vec<String> {
    let mut cli = Cli::command();
    cli.build();
    let mut names: Vec<String> = cli
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .chain(OUTSIDE_CLAP.iter().map(|v| v.name.to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Names that look like the proxy's settings but are not: (name, a file that reads it, what).
    const NOT_SETTINGS: &[(&str, &str, &str)] = &[
        (
            "PROXY_PORT",
            "compose/compose.yaml",
            "the host port compose publishes the proxy on",
        ),
        (
            "PROXY_METRICS_PORT",
            "compose/compose.yaml",
            "the host port of the operations listener",
        ),
        (
            "PROXY_IMAGE",
            "compose/compose.yaml",
            "the proxy image compose builds or pulls",
        ),
        (
            "PROXY_TEST_S3_ENDPOINT",
            "proxy/tests/common/mod.rs",
            "the integration tests' store",
        ),
        (
            "PROXY_TEST_S3_ACCESS_KEY",
            "proxy/tests/common/mod.rs",
            "the integration tests' store",
        ),
        (
            "PROXY_TEST_S3_SECRET_KEY",
            "proxy/tests/common/mod.rs",
            "the integration tests' store",
        ),
        (
            "PROXY_TEST_S3_REGION",
            "proxy/tests/common/mod.rs",
            "the integration tests' store",
        ),
        (
            "PROXY_TEST_S3_STORE",
            "proxy/tests/common/mod.rs",
            "the integration tests' store",
        ),
    ];

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// Every file under `dir`, recursively, in a stable order.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `PROXY_…` names in a text, each with its line and whether a `*` follows (a family).
    fn proxy_names(text: &str) -> Vec<(usize, String, bool)> {
        let mut names = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let bytes = line.as_bytes();
            let mut from = 0;
            while let Some(at) = line[from..].find("PROXY_").map(|i| i + from) {
                let end = at
                    + bytes[at..]
                        .iter()
                        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_')
                        .count();
                let glued =
                    at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
                if !glued {
                    names.push((
                        number + 1,
                        line[at..end].to_owned(),
                        bytes.get(end) == Some(&b'*'),
                    ));
                }
                from = end;
            }
        }
        names
    }

    #[test]
    fn docs_configuration_md_is_what_the_binary_generates() {
        let path = repo().join("docs/configuration.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = render();
        if committed != generated {
            let first = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(committed.lines().count().min(generated.lines().count()));
            panic!(
                "docs/configuration.md differs from what the flags' definitions generate (first at \
                 line {}):\n  committed: {:?}\n  generated: {:?}\nRun {REGENERATE} and commit the \
                 result.",
                first + 1,
                committed.lines().nth(first).unwrap_or("(end of file)"),
                generated.lines().nth(first).unwrap_or("(end of file)"),
            );
        }
    }

    /// What makes the test above fail on a renamed variable: the reference names it.
    #[test]
    fn a_renamed_variable_changes_the_reference() {
        let renamed = Cli::command().mut_subcommand("serve", |serve| {
            serve.mut_arg("listen", |arg| arg.env("PROXY_LISTEN_ADDRESS"))
        });
        let (before, after) = (render(), render_command(renamed));
        assert!(before.contains("| `PROXY_LISTEN` | `--listen` |"));
        assert!(!after.contains("`PROXY_LISTEN`"));
        assert!(after.contains("| `PROXY_LISTEN_ADDRESS` | `--listen` |"));
    }

    /// Every variable named in proxy/src (a clap `env` attribute, or read with `std::env::var`) is in
    /// the reference: an Args struct left out of `Cli`, or a new `env::var`, would not be.
    #[test]
    fn every_variable_the_source_names_is_in_the_reference() {
        let known = variables();
        let mut missing = Vec::new();
        let mut seen = 0;
        for path in files_under(&repo().join("proxy/src")) {
            let text = read(&path);
            for marker in ["env = \"", "var(\"", "var_os(\""] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    seen += 1;
                    if !known.iter().any(|k| k == name) {
                        let path = path.strip_prefix(repo()).unwrap_or(&path).to_owned();
                        missing.push(format!("{}: {name}", path.display()));
                    }
                }
            }
        }
        assert!(seen >= 60, "only {seen} variables found in proxy/src");
        assert!(
            missing.is_empty(),
            "not in the reference (flatten the Args into `Cli`, or list the variable in \
             OUTSIDE_CLAP): {missing:#?}"
        );
    }

    /// The docs, compose and the chart name no `PROXY_*` variable the binary does not read.
    #[test]
    fn the_docs_name_no_variable_that_does_not_exist() {
        let root = repo();
        let known = variables();
        for (name, file, _) in NOT_SETTINGS {
            assert!(!known.iter().any(|k| k == name), "{name} is a setting now");
            assert!(
                read(&root.join(file)).contains(name),
                "{file} no longer names {name}"
            );
        }
        let mut files = vec![
            root.join("README.md"),
            root.join("compose/.env.example"),
            root.join("compose/compose.yaml"),
        ];
        files.extend(
            files_under(&root.join("docs"))
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
        files.extend(files_under(&root.join("charts")));
        let mut unknown = Vec::new();
        let mut seen = 0;
        for path in &files {
            for (line, name, family) in proxy_names(&read(path)) {
                seen += 1;
                let exists = if family {
                    known.iter().any(|k| k.starts_with(&name))
                } else {
                    known.contains(&name) || NOT_SETTINGS.iter().any(|(n, _, _)| *n == name)
                };
                if !exists {
                    let path = path.strip_prefix(&root).unwrap_or(path);
                    unknown.push(format!("{}:{line}: {name}", path.display()));
                }
            }
        }
        assert!(
            seen >= 100,
            "only {seen} PROXY_ names found: is the scan looking?"
        );
        assert!(
            unknown.is_empty(),
            "no such variable (docs/configuration.md lists them all; a name that is not the \
             proxy's goes in NOT_SETTINGS with its reason): {unknown:#?}"
        );
    }

    /// A variable's default where the reference states one value: `` `60` `` → "60".
    fn stated_defaults(reference: &str) -> Vec<(String, String)> {
        reference
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split(" | ").collect();
                let name = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
                let default = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                (!default.contains('`')).then(|| (name.to_owned(), default.to_owned()))
            })
            .collect()
    }

    /// The docs' own tables (`| `VAR` | default | …`) state the binary's defaults.
    #[test]
    fn the_docs_tables_state_the_binarys_defaults() {
        let defaults = stated_defaults(&render());
        assert!(defaults.len() >= 40, "{defaults:?}");
        let mut wrong = Vec::new();
        let mut checked = 0;
        let docs = files_under(&repo().join("docs"));
        for path in docs
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
        {
            if path.ends_with("configuration.md") {
                continue;
            }
            for (number, line) in read(path).lines().enumerate() {
                let cells: Vec<&str> = line.split(" | ").collect();
                // `VAR`, or `VAR` (`--flag`), then a plain value.
                let Some(name) = cells[0]
                    .strip_prefix("| `")
                    .and_then(|c| c.split('`').next())
                    .filter(|n| cells[0].matches('`').count() <= 4 && !n.contains(' '))
                else {
                    continue;
                };
                let Some((_, default)) = defaults.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                let Some(stated) = cells.get(1).map(|c| c.trim_matches('`')) else {
                    continue;
                };
                if stated.contains([' ', '`', '(']) {
                    continue; // prose ("from the request", "(empty)"), not a value
                }
                checked += 1;
                if stated != default {
                    let path = path.strip_prefix(repo()).unwrap_or(path);
                    wrong.push(format!(
                        "{}:{}: {name} {stated}, the binary's default is {default}",
                        path.display(),
                        number + 1
                    ));
                }
            }
        }
        assert!(
            checked >= 20,
            "only {checked} defaults found in docs/*.md tables"
        );
        assert!(
            wrong.is_empty(),
            "defaults the binary does not have (docs/configuration.md lists its own): {wrong:#?}"
        );
    }

    #[test]
    fn names_are_found_whole() {
        assert_eq!(
            proxy_names("`PROXY_A_B=1`, MY_PROXY_X, PROXY_DOWNLOAD_* and\nPROXY_"),
            [
                (1, "PROXY_A_B".to_owned(), false),
                (1, "PROXY_DOWNLOAD_".to_owned(), true),
                (2, "PROXY_".to_owned(), false),
            ]
        );
    }
}
