//! What a package of trackedge ships besides the binary: shell completions and man
//! pages generated from the command line, the hardened systemd unit (checked with
//! `systemd-analyze verify` and its offline security score), LICENSE and CHANGELOG.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::BIN;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn trackedge(args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("run trackedge");
    assert!(
        output.status.success(),
        "trackedge {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// What bash's completion offers for the words typed so far.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script:?}\n\
         COMP_WORDS=({line})\n\
         COMP_CWORD={}\n\
         COMP_LINE={line:?}\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _trackedge trackedge {:?} {:?}\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_commands_and_flags_from_the_generated_script() {
    let Some(_) = common::tools::require("bash", "bash") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("trackedge.bash");
    std::fs::write(&script, trackedge(&["completions", "bash"]).stdout).unwrap();
    let commands = bash_completes(&script, &["trackedge", "s"]);
    assert_eq!(commands, ["serve", "sign"], "{commands:?}");
    let flags = bash_completes(&script, &["trackedge", "serve", "--d"]);
    assert_eq!(flags, ["--data-dir"], "{flags:?}");
    let shells = bash_completes(&script, &["trackedge", "completions", "z"]);
    assert_eq!(shells, ["zsh"], "{shells:?}");
}

#[test]
fn completions_exist_for_every_shell_clap_knows() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = String::from_utf8(trackedge(&["completions", shell]).stdout).unwrap();
        for word in ["check-config", "serve", "sign", "data-dir"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn the_man_pages_cover_every_command_and_render_cleanly() {
    let page = String::from_utf8(trackedge(&["man"]).stdout).unwrap();
    assert!(page.contains(".TH trackedge 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    trackedge(&["man", "--dir", dir.path().to_str().unwrap()]);
    for command in ["serve", "check-config", "sign", "completions", "man"] {
        let path = dir.path().join(format!("trackedge-{command}.1"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{path:?}"));
        assert!(text.contains(".SH OPTIONS"), "{command}");
    }
    let serve = std::fs::read_to_string(dir.path().join("trackedge-serve.1")).unwrap();
    assert!(
        serve.contains("TRACKEDGE_DATA_DIR"),
        "env vars are documented"
    );
    // groff with every warning on, as man would render it.
    let Some(groff) = common::tools::require("groff", "groff-base") else {
        return;
    };
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let output = Command::new(&groff)
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{path:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The unit with its ExecStart pointed at the binary under test, in a temp dir,
/// and a MANPATH holding the generated pages (its Documentation= is checked).
fn unit_under_test(dir: &Path) -> (PathBuf, PathBuf) {
    let unit = std::fs::read_to_string(Path::new(ROOT).join("contrib/systemd/trackedge.service"))
        .expect("unit file");
    assert!(unit.contains("ExecStart=/usr/local/bin/trackedge serve"));
    let path = dir.join("trackedge.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/trackedge", BIN)).unwrap();
    let man = dir.join("man");
    std::fs::create_dir_all(man.join("man1")).unwrap();
    trackedge(&["man", "--dir", man.join("man1").to_str().unwrap()]);
    (path, man)
}

#[test]
fn the_systemd_unit_verifies_and_scores_as_hardened() {
    let Some(analyze) = common::tools::require("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (unit, man) = unit_under_test(dir.path());
    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // The offline score, 0 (locked down) to 10 (unrestricted), times ten: at most
    // 2.0 ("OK"); a network daemon cannot go much lower (it needs sockets, the host
    // network and the CDN's address range).
    let security = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "exposure above 2.0:\n{report}{}",
        String::from_utf8_lossy(&security.stderr)
    );
    assert!(report.contains("Overall exposure level"), "{report}");

    // The check can fail: a unit whose binary is missing does not verify.
    let broken = dir.path().join("broken.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace(BIN, "/nonexistent/trackedge");
    std::fs::write(&broken, text).unwrap();
    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(&broken)
        .env("MANPATH", &man)
        .output()
        .unwrap();
    assert!(
        !verify.status.success(),
        "a missing ExecStart binary passed"
    );
}

#[test]
fn license_and_changelog_ship_with_the_source() {
    let license = std::fs::read_to_string(Path::new(ROOT).join("LICENSE")).expect("LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let changelog =
        std::fs::read_to_string(Path::new(ROOT).join("CHANGELOG.md")).expect("CHANGELOG.md");
    assert!(changelog.contains("## Unreleased"));
    assert!(changelog.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_client_ip_recipes_are_valid_config() {
    use trackedge::config::{Config, Overrides};
    let page = std::fs::read_to_string(Path::new(ROOT).join("docs/client-ip.md")).unwrap();
    let blocks: Vec<&str> = page
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    let mut checked = 0;
    for block in blocks {
        // The generic shape at the top and CloudFront's generated list are templates.
        if block.contains("...") || !block.contains("trusted_proxies = [") {
            continue;
        }
        let config = Config::from_toml_str(block, &Overrides::default())
            .unwrap_or_else(|err| panic!("{err}\n{block}"));
        assert!(!config.client_ip.trusted_proxies.is_empty(), "{block}");
        checked += 1;
    }
    // nginx, HAProxy, Cloudflare, Fastly.
    assert_eq!(checked, 4);
}
