//! `trackd export` and `trackd import`: on the data directory directly, or through a
//! running server (`--url`, `--key`), with a progress bar on a terminal and a summary.

use std::io::Write;
use std::time::Instant;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;
use trackd_core::read::ExportQuery;
use trackd_core::SystemClock;

use crate::cli::{admin_store, bulk_store, CliError, ExportArgs, ImportArgs, UserExportArgs};
use crate::import::{ImportSummary, Progress};

fn time_params(since: &Option<String>, until: &Option<String>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if let Some(s) = since {
        pairs.push(("since".to_owned(), s.clone()));
    }
    if let Some(u) = until {
        pairs.push(("until".to_owned(), u.clone()));
    }
    pairs
}

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{spinner}} {{human_pos}} {what} ({{per_sec}}) {{elapsed}}"
    )) {
        bar.set_style(style);
    }
    bar
}

fn rate(n: u64, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// An error answer of a running server, as its message.
async fn remote_error(response: reqwest::Response) -> CliError {
    let status = response.status();
    let message = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    CliError::Remote(format!("server answered {status}: {message}"))
}

/// `trackd export`.
pub async fn export(args: ExportArgs) -> Result<(), CliError> {
    let pairs = time_params(&args.since, &args.until);
    let started = Instant::now();
    let bar = spinner("events");
    let count = match (&args.remote.url, &args.remote.key) {
        (Some(url), Some(key)) => {
            let url = format!("{}/api/v2/events/export", url.trim_end_matches('/'));
            let response = reqwest::Client::new()
                .get(url)
                .query(&pairs)
                .bearer_auth(key)
                .send()
                .await
                .map_err(|e| CliError::Remote(e.to_string()))?;
            if !response.status().is_success() {
                return Err(remote_error(response).await);
            }
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.output {
                Some(path) => Box::new(tokio::fs::File::create(path).await?),
                None => Box::new(tokio::io::stdout()),
            };
            let mut out = tokio::io::BufWriter::new(&mut out);
            let mut stream = response.bytes_stream();
            let mut count = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| CliError::Remote(e.to_string()))?;
                let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                count += lines;
                bar.inc(lines);
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            count
        }
        _ => {
            let store = admin_store(&args.store).await?;
            let exported = async {
                let project = store.project(&args.project).await?;
                let query = ExportQuery::parse(project.id, &pairs)?;
                let out: Box<dyn Write + Send> = match &args.output {
                    Some(path) => Box::new(std::fs::File::create(path)?),
                    None => Box::new(std::io::stdout()),
                };
                let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
                let chunks = trackd_core::export_chunks(store.clone(), query);
                let count = write_lines(&mut out, chunks, |n| bar.set_position(n)).await?;
                Ok::<u64, CliError>(count)
            }
            .await;
            store.shutdown().await?;
            exported?
        }
    };
    bar.finish_and_clear();
    eprintln!(
        "exported {count} events in {:.1} s ({:.0} events/s)",
        started.elapsed().as_secs_f64(),
        rate(count, started)
    );
    Ok(())
}

/// Writes each chunk's events as export lines, then flushes; `progress` is told the count
/// after each chunk. Returns how many were written.
async fn write_lines(
    out: &mut impl Write,
    chunks: impl futures_util::Stream<
        Item = Result<Vec<trackd_core::read::EventRow>, trackd_core::StoreError>,
    >,
    progress: impl Fn(u64),
) -> Result<u64, CliError> {
    let mut chunks = std::pin::pin!(chunks);
    let mut count = 0u64;
    let mut line = Vec::with_capacity(1024);
    while let Some(events) = chunks.next().await {
        for event in events? {
            line.clear();
            event.write_json(&mut line);
            line.push(b'\n');
            out.write_all(&line)?;
            count += 1;
        }
        progress(count);
    }
    out.flush()?;
    Ok(count)
}

/// `trackd user export`: the profile's line, then the user's events, newest first, a page
/// at a time.
pub async fn user_export(args: UserExportArgs) -> Result<(), CliError> {
    let store = admin_store(&args.store).await?;
    let exported = async {
        let project = store.project(&args.project).await?;
        let Some(profile) = store.user(project.id, &args.id).await? else {
            return Err(CliError::Invalid(format!(
                "id: no such user in project {}",
                args.project
            )));
        };
        // Handing out a person's data is an act the audit log keeps (the user by hash).
        let key = trackd_core::privacy::SuppressionKey::new(&store.cursor_key().await?);
        let target = key.audit_target(project.id, &args.id);
        crate::cli::audited(&store, project.id, "user.export", target).await?;
        let out: Box<dyn Write + Send> = match &args.output {
            Some(path) => Box::new(std::fs::File::create(path)?),
            None => Box::new(std::io::stdout()),
        };
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, out);
        out.write_all(&profile.to_json())?;
        out.write_all(b"\n")?;
        let pages =
            trackd_core::store::user_event_pages(store.clone(), project.id, args.id.clone());
        write_lines(&mut out, pages, |_| {}).await
    }
    .await;
    store.shutdown().await?;
    let count = exported?;
    eprintln!("exported the profile and {count} events");
    Ok(())
}

/// `trackd import`.
pub async fn import(args: ImportArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|e| CliError::Invalid(format!("{}: {e}", args.file.display())))?;
    let size = file.metadata().await?.len();
    let bar = ProgressBar::new(size);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)")
    {
        bar.set_style(style);
    }
    let summary = match (&args.remote.url, &args.remote.key) {
        (Some(url), Some(key)) => {
            let url = format!("{}/api/v2/events/import", url.trim_end_matches('/'));
            let progress = bar.clone();
            let body = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    progress.inc(bytes.len() as u64);
                }
            });
            let response = reqwest::Client::new()
                .post(url)
                .query(&[("dedup", if args.no_dedup { "false" } else { "true" })])
                .bearer_auth(key)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map_err(|e| CliError::Remote(e.to_string()))?;
            if !response.status().is_success() {
                return Err(remote_error(response).await);
            }
            let summary: ImportSummary = response
                .json()
                .await
                .map_err(|e| CliError::Remote(e.to_string()))?;
            for error in &summary.errors {
                bar.suspend(|| eprintln!("line {}: {}", error.line, error.message));
            }
            summary
        }
        _ => {
            let store = bulk_store(&args.store).await?;
            // Large transactions on SQLite by default: its writer's bulk cache holds what
            // they dirty (PostgreSQL's restore is measured at the server's size).
            let limits = match (args.batch, &args.store.database_url) {
                (Some(batch), _) => crate::import::Limits::batch(batch as usize),
                (None, None) => crate::import::Limits::BULK,
                (None, Some(_)) => crate::import::Limits::SERVER,
            };
            let imported = async {
                let project = store.project(&args.project).await?;
                let progress = bar.clone();
                let summary = crate::import::run(
                    &store,
                    &SystemClock,
                    project.id,
                    tokio::io::BufReader::with_capacity(256 * 1024, file),
                    !args.no_dedup,
                    limits,
                    move |event| match event {
                        Progress::Read(n) => progress.set_position(n),
                        Progress::Bad(e) => {
                            progress.suspend(|| eprintln!("line {}: {}", e.line, e.message))
                        }
                    },
                )
                .await?;
                Ok::<ImportSummary, CliError>(summary)
            }
            .await;
            store.shutdown().await?;
            imported?
        }
    };
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    }
    eprintln!(
        "imported {} events ({} duplicates skipped, {} bad lines) in {:.1} s ({:.0} events/s)",
        summary.imported,
        summary.duplicates,
        summary.rejected,
        started.elapsed().as_secs_f64(),
        rate(summary.imported, started)
    );
    Ok(())
}
