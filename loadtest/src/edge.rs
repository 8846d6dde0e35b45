//! The real trackedge binary as a server under test: writes its config, asks
//! `trackedge check-config` which optional parts this build accepts (forwarding,
//! GeoIP), and starts it on 127.0.0.1:0 with a temp data dir.
//!
//! Stages still being built elsewhere (the forwarder, enrichment) are probed rather
//! than assumed, so the harness runs against main today and uses them the day they
//! land without a change.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::process::{self, Spawned};

/// The config key (dotted `table.key`) that points enrichment at a GeoIP database.
/// One constant so it follows the enrichment branch's final name in one edit.
pub const GEOIP_DB_KEY: &str = "geoip.city_db";

#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    pub worker_threads: usize,
    /// `http://127.0.0.1:PORT/ingest` of the accounting receiver.
    pub forward_url: Option<String>,
    pub geoip: Option<PathBuf>,
    /// Serve the public listener over TLS with this certificate.
    pub tls: Option<crate::certs::TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct EdgeSetup {
    pub bin: PathBuf,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub forwarding: bool,
    pub geoip: bool,
    /// What was left out and why, for the report.
    pub notes: Vec<String>,
}

fn render(options: &EdgeOptions, forward: bool, geoip: bool) -> String {
    let mut text = String::from("node_id = \"loadtest\"\n");
    text.push_str(&format!("worker_threads = {}\n", options.worker_threads));
    // Logs at warn: a request log would measure the terminal, not the edge.
    text.push_str("[log]\nlevel = \"warn\"\n");
    // The harness is the CDN: trust its forwarded client addresses.
    text.push_str("[client_ip]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n");
    if let (true, Some(url)) = (forward, &options.forward_url) {
        text.push_str(&format!(
            "[forward]\nsink = \"http\"\n[forward.http]\nurl = {url:?}\n"
        ));
    }
    if let (true, Some(path)) = (geoip, &options.geoip) {
        let (table, key) = GEOIP_DB_KEY.rsplit_once('.').unwrap_or(("", GEOIP_DB_KEY));
        if !table.is_empty() {
            text.push_str(&format!("[{table}]\n"));
        }
        text.push_str(&format!("{key} = {:?}\n", path.display().to_string()));
    }
    if let Some(tls) = &options.tls {
        text.push_str(&format!(
            "[[public.tls]]\ncert_path = {:?}\nkey_path = {:?}\n",
            tls.cert.display().to_string(),
            tls.key.display().to_string()
        ));
    }
    text
}

/// Whether this binary's `check-config` accepts `config`; the error text if not.
fn accepted(bin: &Path, config: &Path, data_dir: &Path) -> anyhow::Result<Result<(), String>> {
    let output = Command::new(bin)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("RUST_LOG")
        // The refusal is a note in the report, not a place for a backtrace.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .with_context(|| format!("cannot run {} check-config", bin.display()))?;
    Ok(if output.status.success() {
        Ok(())
    } else {
        Err(one_line(&String::from_utf8_lossy(&output.stderr)))
    })
}

/// toml's multi-line error (source excerpt with a `|` gutter) as one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|'))
        // `5 | [enrich]`: a numbered source line of the excerpt.
        .filter(|line| {
            line.split('|')
                .next()
                .is_none_or(|n| n.trim().parse::<u32>().is_err())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes the richest config this build accepts into `dir`.
/// The data dir is `dir/data`; two setups in one `dir` share it (and the key file).
pub fn prepare(bin: &Path, dir: &Path, options: &EdgeOptions) -> anyhow::Result<EdgeSetup> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let config_path = dir.join(if options.tls.is_some() {
        "trackedge-tls.toml"
    } else {
        "trackedge.toml"
    });
    let mut notes = Vec::new();
    let mut forward = options.forward_url.is_some();
    let mut geoip = options.geoip.is_some();
    loop {
        std::fs::write(&config_path, render(options, forward, geoip))
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        match accepted(bin, &config_path, &data_dir)? {
            Ok(()) => break,
            // Drop the optional parts one at a time, newest first.
            Err(err) if geoip => {
                notes.push(format!(
                    "GeoIP database not passed: this build refuses `{GEOIP_DB_KEY}` ({err})"
                ));
                geoip = false;
            }
            Err(err) if forward => {
                notes.push(format!(
                    "no [forward] section: this build refuses it ({err})"
                ));
                forward = false;
            }
            Err(err) => anyhow::bail!("trackedge refuses the harness's base config: {err}"),
        }
    }
    Ok(EdgeSetup {
        bin: bin.to_owned(),
        config_path,
        data_dir,
        forwarding: forward,
        geoip,
        notes,
    })
}

/// Starts `trackedge serve` with `setup`, pinned to `core` when given.
pub fn spawn(setup: &EdgeSetup, core: Option<usize>) -> anyhow::Result<Spawned> {
    let mut cmd = process::command(&setup.bin, core);
    cmd.arg("serve")
        .arg("--config")
        .arg(&setup.config_path)
        .args([
            "--public-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&setup.data_dir)
        .env_remove("RUST_LOG");
    let log = setup.data_dir.join("trackedge.stderr.log");
    Spawned::start("trackedge", cmd, &log)
}

/// Deletes the event files the file sink wrote (a saturation run writes hundreds
/// of MB); the spool and the key file stay.
pub fn remove_outputs(setup: &EdgeSetup) {
    let Ok(entries) = std::fs::read_dir(&setup.data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("events") && name.ends_with(".ndjson") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The trackedge binary: `explicit`, else next to this executable (both are built
/// into the same target directory), else `trackedge` on PATH.
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.exists(), "{} does not exist", path.display());
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    if let Some(dir) = exe.parent() {
        for candidate in [dir.join("trackedge"), dir.join("../trackedge")] {
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    anyhow::bail!(
        "cannot find the trackedge binary next to {}; build it (`cargo build --release -p trackedge`) or pass --server-bin",
        exe.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_sections_render_as_valid_toml() {
        let options = EdgeOptions {
            worker_threads: 1,
            forward_url: Some("http://127.0.0.1:9/ingest".into()),
            geoip: Some(PathBuf::from("/tmp/geo.mmdb")),
            tls: Some(crate::certs::TlsFiles {
                cert: "/tmp/c.pem".into(),
                key: "/tmp/k.pem".into(),
            }),
        };
        let text = render(&options, true, true);
        let value: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            value["forward"]["http"]["url"].as_str(),
            Some("http://127.0.0.1:9/ingest")
        );
        assert_eq!(value["worker_threads"].as_integer(), Some(1));
        let (table, key) = GEOIP_DB_KEY.rsplit_once('.').unwrap();
        assert_eq!(value[table][key].as_str(), Some("/tmp/geo.mmdb"));
        assert_eq!(
            value["public"]["tls"][0]["cert_path"].as_str(),
            Some("/tmp/c.pem")
        );
        assert!(!render(&options, false, false).contains("forward"));
    }

    #[test]
    fn refusals_become_one_line() {
        let text = "Error: config is not valid TOML for trackedge: TOML parse error at line 5, column 2\n  |\n5 | [enrich]\n  |  ^^^^^^\nunknown field `enrich`, expected one of `node_id`\n";
        assert_eq!(
            one_line(text),
            "Error: config is not valid TOML for trackedge: TOML parse error at line 5, column 2 unknown field `enrich`, expected one of `node_id`"
        );
    }
}
