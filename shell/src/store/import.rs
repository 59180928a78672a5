//! One-time import of the JSON-lines files earlier versions kept under `DATA_DIR`.
//!
//! Before the database, callbacks were appended to `recordings.jsonl` and `call_status.jsonl`
//! and the recording worker's progress to `recordings-status.jsonl`. [`import_jsonl`] reads
//! whatever of the three exists, writes it into the store in one transaction (a rerun
//! changes nothing: every insert skips rows already there), and, once that has committed,
//! renames each file to `<name>.imported` so the next start does not read it again. A torn
//! line (a crash mid-append) is skipped and counted, as the old reader did.
//!
//! It runs at every start (`handset serve`) and as `handset migrate-data`, which also takes
//! another directory, to move a single instance's data into a fleet's PostgreSQL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::calls::insert_call_status;
use super::recordings::insert_recording;
use super::{CallStatusEvent, RecordingEvent, Store, StoreError, ms};

/// The old files, by name under `DATA_DIR`.
pub(super) const FILES: [&str; 3] = [
    "recordings.jsonl",
    "call_status.jsonl",
    "recordings-status.jsonl",
];

/// What an import found and wrote.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct ImportReport {
    /// Files read (and renamed to `*.imported`).
    pub files: Vec<PathBuf>,
    /// Recording callbacks written (not already in the store).
    pub recordings: u64,
    /// Call-status callbacks written (not already in the store).
    pub call_statuses: u64,
    /// Recordings whose progress (fetched, transcribed, failed) was carried over.
    pub progress: u64,
    /// Lines that did not parse (torn writes) or had no `RecordingSid`: skipped.
    pub skipped_lines: u64,
}

/// One line of the old `recordings-status.jsonl`.
#[derive(Debug, Deserialize)]
struct ProgressLine {
    recording_sid: String,
    status: String,
    at_unix_ms: u64,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Imports the old JSON-lines files found in `dir` into `store` (see the module docs).
pub async fn import_jsonl(store: &Store, dir: &Path) -> Result<ImportReport, StoreError> {
    let mut report = ImportReport::default();
    let recordings: Vec<RecordingEvent> = read_lines(&dir.join(FILES[0]), &mut report)?;
    let statuses: Vec<CallStatusEvent> = read_lines(&dir.join(FILES[1]), &mut report)?;
    let progress: Vec<ProgressLine> = read_lines(&dir.join(FILES[2]), &mut report)?;
    if report.files.is_empty() {
        return Ok(report);
    }
    // The latest progress line per recording wins, as the old reader had it.
    let mut latest: HashMap<&str, &ProgressLine> = HashMap::new();
    for line in &progress {
        latest.insert(line.recording_sid.as_str(), line);
    }

    let mut tx = store.pool().begin().await?;
    for rec in &recordings {
        if rec.recording_sid.is_empty() {
            report.skipped_lines += 1;
            continue;
        }
        if insert_recording(&mut *tx, rec, rec.received_unix_ms).await? {
            report.recordings += 1;
        }
    }
    for status in &statuses {
        if insert_call_status(&mut *tx, status).await? {
            report.call_statuses += 1;
        }
    }
    for line in latest.values() {
        let state = match line.status.as_str() {
            "fetched" | "failed" | "transcribed" => line.status.as_str(),
            _ => {
                report.skipped_lines += 1;
                continue;
            }
        };
        // Only jobs nobody has touched since they were imported: a rerun, or an import
        // into a store whose workers already moved on, changes nothing.
        let done = sqlx::query(
            "UPDATE recordings SET state = $2, file = $3, transcript = $4, error = $5, \
             updated_unix_ms = $6 WHERE recording_sid = $1 AND state = 'pending' AND claims = 0",
        )
        .bind(&line.recording_sid)
        .bind(state)
        .bind(line.file.as_deref())
        .bind(line.transcript.as_deref())
        .bind(line.error.as_deref())
        .bind(ms(line.at_unix_ms))
        .execute(&mut *tx)
        .await?;
        report.progress += done.rows_affected();
    }
    tx.commit().await?;

    for file in &report.files {
        let mut done = file.clone().into_os_string();
        done.push(".imported");
        std::fs::rename(file, &done).map_err(|source| StoreError::Import {
            path: file.display().to_string(),
            source,
        })?;
    }
    Ok(report)
}

/// Every parseable line of `path` (none if it does not exist); notes the file in `report`.
fn read_lines<T: DeserializeOwned>(
    path: &Path,
    report: &mut ImportReport,
) -> Result<Vec<T>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Import {
                path: path.display().to_string(),
                source,
            });
        }
    };
    report.files.push(path.to_owned());
    let mut items = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(item) => items.push(item),
            Err(_) => report.skipped_lines += 1,
        }
    }
    Ok(items)
}
