//! Durable, append-only event logs (JSON lines) under `DATA_DIR`.
//!
//! Twilio's recording and call-status callbacks are facts we must not lose: each one is
//! appended as one JSON object per line and `fsync`ed before the webhook answers 200, so an
//! acknowledged callback survives a crash or restart. On start the logs are read back; a torn
//! last line (a crash mid-write) is skipped and counted, never fatal.
//!
//! Files: `recordings.jsonl` ([`RecordingEvent`]) and `call_status.jsonl` ([`CallStatusEvent`]).
//! Writes are blocking file I/O: async callers run them on `spawn_blocking`. One mutex per file
//! serialises appends so lines never interleave.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A `<Record action>` or recording-status callback.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct RecordingEvent {
    /// When we received it, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// `CallSid`.
    pub call_sid: String,
    /// `AccountSid`.
    pub account_sid: String,
    /// `RecordingSid` (may be empty: older callbacks omit it).
    pub recording_sid: String,
    /// `RecordingUrl`: where the audio can be fetched.
    pub recording_url: String,
    /// `RecordingDuration` in seconds, when given and numeric.
    pub duration_secs: Option<u64>,
    /// `Digits`: the key that ended the recording, if any.
    pub digits: Option<String>,
}

/// A call-status callback.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
pub struct CallStatusEvent {
    /// When we received it, milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// `CallSid`.
    pub call_sid: String,
    /// `CallStatus` (`queued`, `ringing`, `in-progress`, `completed`, …).
    pub call_status: String,
    /// `SequenceNumber`: orders callbacks that arrive out of order.
    pub sequence_number: Option<u64>,
    /// `CallDuration` in seconds (terminal callbacks).
    pub duration_secs: Option<u64>,
}

/// A log file could not be opened, read or appended to.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}: {source}")]
pub struct StoreError {
    /// What we were doing (`open`, `read`, `append to`, `create`).
    action: &'static str,
    /// The file or directory.
    path: PathBuf,
    /// The operating-system error.
    #[source]
    source: std::io::Error,
}

/// What was found on disk at start.
#[derive(Clone, Debug, Default)]
pub struct Reloaded {
    /// Every stored recording, oldest first.
    pub recordings: Vec<RecordingEvent>,
    /// Number of stored call-status events.
    pub call_statuses: usize,
    /// Lines that did not parse (torn writes), skipped.
    pub skipped_lines: usize,
}

/// The shell's durable logs.
#[derive(Debug)]
pub struct Store {
    /// `recordings.jsonl`, opened for append.
    recordings: JsonLog,
    /// `call_status.jsonl`, opened for append.
    call_status: JsonLog,
}

impl Store {
    /// Creates `dir` if needed, reads back both logs and opens them for appending.
    pub fn open(dir: &Path) -> Result<(Self, Reloaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let mut reloaded = Reloaded::default();
        let (recordings, rec, skipped) =
            JsonLog::open::<RecordingEvent>(dir.join("recordings.jsonl"))?;
        reloaded.recordings = rec;
        reloaded.skipped_lines += skipped;
        let (call_status, statuses, skipped) =
            JsonLog::open::<CallStatusEvent>(dir.join("call_status.jsonl"))?;
        reloaded.call_statuses = statuses.len();
        reloaded.skipped_lines += skipped;
        Ok((
            Self {
                recordings,
                call_status,
            },
            reloaded,
        ))
    }

    /// Appends and syncs one recording event (blocking).
    pub fn append_recording(&self, event: &RecordingEvent) -> Result<(), StoreError> {
        self.recordings.append(event)
    }

    /// Appends and syncs one call-status event (blocking).
    pub fn append_call_status(&self, event: &CallStatusEvent) -> Result<(), StoreError> {
        self.call_status.append(event)
    }
}

/// One append-only JSON-lines file.
#[derive(Debug)]
struct JsonLog {
    /// File path, for error messages.
    path: PathBuf,
    /// The file, opened with `O_APPEND`.
    file: Mutex<File>,
}

impl JsonLog {
    fn open<T: DeserializeOwned>(path: PathBuf) -> Result<(Self, Vec<T>, usize), StoreError> {
        let err = |action, source| StoreError {
            action,
            path: path.clone(),
            source,
        };
        let mut items = Vec::new();
        let mut skipped = 0;
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).split(b'\n') {
                    let line = line.map_err(|e| err("read", e))?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<T>(&line) {
                        Ok(item) => items.push(item),
                        Err(_) => skipped += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("read", e)),
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err("open", e))?;
        if skipped > 0 {
            // Terminate a torn last line so the next record starts on its own line.
            file.write_all(b"\n").map_err(|e| err("append to", e))?;
        }
        Ok((
            Self {
                path,
                file: Mutex::new(file),
            },
            items,
            skipped,
        ))
    }

    fn append<T: Serialize>(&self, item: &T) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(item).map_err(|e| StoreError {
            action: "append to",
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut file = self.file.lock();
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|source| StoreError {
                action: "append to",
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "handset-store-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn recording(sid: &str) -> RecordingEvent {
        RecordingEvent {
            received_unix_ms: 1,
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            recording_sid: sid.into(),
            recording_url: format!("https://api.twilio.com/rec/{sid}"),
            duration_secs: Some(7),
            digits: None,
        }
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = temp_dir("reopen");
        {
            let (store, reloaded) = Store::open(&dir).unwrap();
            assert!(reloaded.recordings.is_empty());
            store.append_recording(&recording("RE1")).unwrap();
            store.append_recording(&recording("RE2")).unwrap();
            store
                .append_call_status(&CallStatusEvent {
                    call_sid: "CA1".into(),
                    call_status: "completed".into(),
                    ..Default::default()
                })
                .unwrap();
        }
        let (_store, reloaded) = Store::open(&dir).unwrap();
        assert_eq!(
            reloaded.recordings,
            vec![recording("RE1"), recording("RE2")]
        );
        assert_eq!(reloaded.call_statuses, 1);
        assert_eq!(reloaded.skipped_lines, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_last_line_is_skipped_and_later_appends_still_parse() {
        let dir = temp_dir("torn");
        {
            let (store, _) = Store::open(&dir).unwrap();
            store.append_recording(&recording("RE1")).unwrap();
        }
        let path = dir.join("recordings.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"received_unix_ms":2,"call_s"#).unwrap();
        drop(f);
        {
            let (store, reloaded) = Store::open(&dir).unwrap();
            assert_eq!(reloaded.recordings.len(), 1);
            assert_eq!(reloaded.skipped_lines, 1);
            store.append_recording(&recording("RE3")).unwrap();
        }
        let (_, reloaded) = Store::open(&dir).unwrap();
        assert_eq!(
            reloaded.recordings,
            vec![recording("RE1"), recording("RE3")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unusable_directory_is_a_clear_error() {
        let dir = temp_dir("file");
        std::fs::write(&dir, b"not a dir").unwrap();
        let err = Store::open(&dir).unwrap_err().to_string();
        assert!(err.starts_with("cannot create "), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
