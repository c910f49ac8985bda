//! The web console in a real browser: `tests/browser/console.mjs` drives Debian's chromium
//! (playwright-core) against a real trackd. Needs node, /usr/bin/chromium and
//! `npm ci --prefix crates/trackd-server/tests/browser`; without them it prints SKIPPED,
//! unless `TRACKD_TEST_REQUIRE_BROWSER=1` (CI), where it fails.

use std::path::Path;

use crate::helpers::{required, skip_notice, ChildServer};

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = browser_dir.join("node_modules/playwright-core").exists()
        && Path::new("/usr/bin/chromium").exists()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            !required("TRACKD_TEST_REQUIRE_BROWSER"),
            "node, chromium or playwright-core missing (TRACKD_TEST_REQUIRE_BROWSER=1)"
        );
        skip_notice(&format!(
            "the browser test needs node, /usr/bin/chromium and npm ci in {}",
            browser_dir.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let secret = server.printed("secret key:");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let shots = shots.canonicalize().expect("screenshot dir");
    // Blocking is fine: the server is a process of its own.
    let output = std::process::Command::new("node")
        .arg(browser_dir.join("console.mjs"))
        .current_dir(&browser_dir)
        .env("TRACKD_URL", &server.addr)
        .env("TRACKD_TOKEN", &token)
        .env("TRACKD_SECRET", &secret)
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("console-live.png"), "{stdout}");
}
