//! The command line: projects, tokens and keys, on a running server's data directory; and
//! the log hygiene of the server it runs.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{event, run_cli, ChildServer};

async fn status_of(client: &reqwest::Client, url: &str, body: String) -> u16 {
    client
        .post(url)
        .body(body)
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// Polls `status` until it gives `want`, for at most 5 s: credential changes reach a running
/// server through its cache (on a miss at once, revocations within a second).
async fn wait_for<F, Fut>(want: u16, status: F) -> u16
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = status().await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn project_create_json_prints_one_object_with_its_credentials() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (ok, stdout, _) = run_cli(&["project", "create", "shop", "--data-dir", d, "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON object on stdout");
    assert_eq!(v["name"], "shop");
    assert!(v["tracking_token"]
        .as_str()
        .expect("token")
        .starts_with("tk_"));
    assert!(v["secret_key"].as_str().expect("key").starts_with("sk_"));
    let (ok, _, stderr) = run_cli(&["project", "create", "shop", "--data-dir", d]);
    assert!(!ok);
    assert!(stderr.contains("project shop already exists"), "{stderr}");
    let (ok, _, stderr) = run_cli(&["project", "create", "bad name", "--data-dir", d]);
    assert!(!ok);
    assert!(stderr.contains("name: must be 1 to 64"), "{stderr}");
    let (ok, stdout, _) = run_cli(&["project", "list", "--data-dir", d, "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(list[0]["name"], "shop");
    // The database holds hashes, never the credentials themselves.
    let bytes = std::fs::read(dir.path().join("trackd.db")).expect("db file");
    let wal = std::fs::read(dir.path().join("trackd.db-wal")).unwrap_or_default();
    for secret in [v["tracking_token"].as_str(), v["secret_key"].as_str()]
        .into_iter()
        .flatten()
    {
        let needle = secret.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
    }
}

#[tokio::test]
async fn tokens_added_and_revoked_take_effect_on_a_running_server() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let server = ChildServer::spawn(dir.path(), &[]);
    let client = reqwest::Client::new();
    let url = format!(
        "{}/api/v2/events/track?auth_token=TOKEN_abc123",
        server.addr
    );
    assert_eq!(
        status_of(&client, &url, event("u", 1).to_string()).await,
        401
    );

    let (ok, stdout, stderr) = run_cli(&[
        "token",
        "add",
        "--project",
        "default",
        "--value",
        "TOKEN_abc123",
        "--data-dir",
        d,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["tracking_token"], "TOKEN_abc123");
    let poll = || status_of(&client, &url, event("poll", 1).to_string());
    assert_eq!(wait_for(200, poll).await, 200);

    let (ok, _, stderr) = run_cli(&[
        "token",
        "revoke",
        "--project",
        "default",
        "TOKEN_abc123",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(wait_for(401, poll).await, 401);

    // A revoked token that does not exist is an error, not a silent success.
    let (ok, _, stderr) = run_cli(&[
        "token",
        "revoke",
        "--project",
        "default",
        "TOKEN_abc123",
        "--data-dir",
        d,
    ]);
    assert!(!ok);
    assert!(stderr.contains("not found"), "{stderr}");
    let (ok, _, _) = run_cli(&["token", "add", "--project", "nope", "--data-dir", d]);
    assert!(!ok);
}

#[tokio::test]
async fn secret_keys_are_added_and_revoked() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let server = ChildServer::spawn(dir.path(), &[]);
    let (ok, stdout, _) = run_cli(&[
        "key",
        "add",
        "--project",
        "default",
        "--data-dir",
        d,
        "--json",
    ]);
    assert!(ok);
    let v: Value = serde_json::from_str(stdout.trim()).expect("json");
    let key = v["secret_key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("sk_"));
    let client = reqwest::Client::new();
    let url = format!("{}/api/v2/events/track", server.addr);
    let send = || {
        client
            .post(&url)
            .bearer_auth(&key)
            .body(event("u", 1).to_string())
            .send()
    };
    assert_eq!(send().await.expect("sent").status(), 403);
    let (ok, _, _) = run_cli(&[
        "key",
        "revoke",
        "--project",
        "default",
        &key,
        "--data-dir",
        d,
    ]);
    assert!(ok);
    let status = wait_for(401, || async {
        send().await.expect("sent").status().as_u16()
    })
    .await;
    assert_eq!(status, 401);
    let (ok, _, stderr) = run_cli(&[
        "key",
        "add",
        "--project",
        "default",
        "--value",
        "x",
        "--data-dir",
        d,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--value is for tracking tokens"),
        "{stderr}"
    );
}

#[tokio::test]
async fn first_start_prints_working_credentials_on_stdout() {
    // What the logs may hold is the log canary's (canary.rs).
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::spawn(dir.path(), &[]);
    let token = server.printed("tracking token:");
    let secret = server.printed("secret key:");
    let client = reqwest::Client::new();
    let url = format!("{}/api/v2/events/track?auth_token={token}", server.addr);
    let body = serde_json::json!({"identity": {"id": "u"}, "event_name": "e"});
    assert_eq!(status_of(&client, &url, body.to_string()).await, 200);
    let events = client
        .get(format!("{}/api/v2/events", server.addr))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("sent");
    assert_eq!(events.status(), 200);
}

/// A command that fails says why: the cause of a storage failure (a refused connection, a
/// missing database, a data dir that cannot be made), the file an import could not open; and
/// a command on existing data refuses a data dir holding none, without making one there.
#[test]
fn failures_name_their_cause_and_a_mistyped_data_dir_is_not_created() {
    let dir = tempfile::tempdir().expect("dir");
    let typo = dir.path().join("typo");
    let typo = typo.to_str().expect("path");
    for args in [
        vec!["export", "--data-dir", typo],
        vec!["project", "list", "--data-dir", typo],
        vec!["token", "add", "--project", "default", "--data-dir", typo],
    ] {
        let (ok, _, stderr) = run_cli(&args);
        assert!(
            !ok && stderr.contains(&format!("--data-dir {typo}: no trackd data here")),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.path().join("typo").exists(), "nothing made");
    // An import into a new data dir is a bulk load: it may start one, but names the file it
    // could not open.
    let missing = dir.path().join("missing.ndjson");
    let missing = missing.to_str().expect("path");
    let (ok, _, stderr) = run_cli(&["import", missing, "--data-dir", typo]);
    assert!(
        !ok && stderr.contains(&format!("{missing}: No such file or directory")),
        "{stderr}"
    );
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"").expect("write");
    let under_a_file = format!("{}/data", blocked.to_str().expect("path"));
    let (ok, _, stderr) = run_cli(&[
        "serve",
        "--data-dir",
        &under_a_file,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !ok && stderr.contains(&format!("storage unavailable: data dir {under_a_file}:")),
        "{stderr}"
    );
    let (ok, _, stderr) = run_cli(&[
        "serve",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/nothing",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !ok && stderr.contains("storage unavailable:")
            && stderr.contains("error connecting to server"),
        "{stderr}"
    );
}

/// The project `serve` makes on its first start is in the audit log, as one made by
/// `trackd project create` is (DESIGN §10: every administrative act).
#[tokio::test]
async fn the_project_made_on_first_start_is_audited() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let server = ChildServer::spawn(dir.path(), &[]);
    server.printed("secret key:");
    let (ok, stdout, stderr) =
        run_cli(&["audit", "--project", "default", "--json", "--data-dir", d]);
    assert!(ok, "{stderr}");
    let acts: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(acts.len(), 1, "{stdout}");
    assert_eq!(acts[0]["action"], "project.create");
    assert_eq!(acts[0]["actor"], "cli");
    assert_eq!(acts[0]["target"], "default");
    drop(server);
}
