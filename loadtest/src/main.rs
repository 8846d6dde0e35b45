//! `trackedge-loadtest`: the load generator and side-by-side comparison runner.
//!
//! Its harness (open/closed-loop load, HDR histograms, accounting, compare mode)
//! is the load-test issue's work; until then this member only pins the workspace
//! shape and checks that URLs minted through the library look right.

fn main() {
    let keys = trackedge::KeyRing::new(vec![trackedge::Key::new(
        1,
        b"loadtest placeholder key, never used to serve",
    )])
    .expect("one key");
    let claims = trackedge::Claims {
        kind: trackedge::Kind::Open,
        tenant: "loadtest".into(),
        campaign: "c".into(),
        message: "m".into(),
        recipient: None,
        link: 0,
        target: None,
        expires_at: None,
        sent_at: None,
    };
    match trackedge::mint_url("http://127.0.0.1:8080", &keys, &claims) {
        Ok(url) => {
            eprintln!("trackedge-loadtest: load generation is not built yet; a sample URL: {url}");
            std::process::exit(2);
        }
        Err(err) => {
            eprintln!("trackedge-loadtest: {err}");
            std::process::exit(1);
        }
    }
}
