//! The recording path: download each recorded message and have the agent transcribe it.
//!
//! When a call falls back to a recorded message, `/webhook/handle_recording` stores Twilio's
//! callback in the store as a job ([`Store::insert_recording`]). Every instance runs a worker
//! ([`run`]) that claims due jobs from the store with a lease and, for each:
//!
//! 1. checks that the callback's `RecordingUrl` is exactly the configured Twilio API's address
//!    of that recording (`{TWILIO_API_URL}/2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}`);
//!    any other URL is refused, logged and the job failed, and nothing is connected to;
//! 2. downloads `….wav` through the [`TwilioClient`] (Basic auth, only ever to
//!    `TWILIO_API_URL`, no redirects), retrying with bounded exponential backoff, and saves it
//!    as `DATA_DIR/recordings/<RecordingSid>.wav` on this instance, fsynced (file and
//!    directory) before the job says `fetched`;
//! 3. offers it to the agent at `AGENT_URL` for transcription on a short WebSocket
//!    (`{"type":"recording",…}`, the PCM as binary messages, `{"type":"recording_end"}`; the
//!    agent answers with a final `transcript`), logs the text (`STT_FINAL`) and stores it.
//!
//! Progress is in the store (`pending` → `fetched` → `transcribed`, or `failed`), so a
//! restart loses nothing and a recording already fetched is not fetched again by the instance
//! that holds its file. The worker renews its lease while it works (every third of
//! `RECORDING_LEASE`); if it crashes, the lease expires and another instance takes the job
//! over, and the crashed one's late writes are refused. A job is done once: every update is
//! conditional on still holding the lease. A transcription that fails is retried later with
//! backoff, up to [`MAX_CLAIMS`] claims. Up to [`CONCURRENCY`] jobs are worked at once, each
//! under its own lease, so one slow download does not hold up the queue.
//!
//! Assumptions: Twilio's WAV is 16-bit PCM mono (8 kHz); recordings are bounded by
//! `RECORD_MAX_LENGTH`, so a download is held in memory (capped at [`max_download`] of it).
//! The credentials and the agent's auth header are never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::agent::protocol::{self, FromAgent};
use crate::config::{Config, Secret};
use crate::store::{JobState, JobUpdate, RecordingEvent, RecordingJob, Store, StoreError};
use crate::twilio::{TwilioClient, TwilioError};
use crate::wav::Pcm16;

/// Most jobs one worker works at once.
pub const CONCURRENCY: usize = 4;

/// Largest recording downloaded for a `<Record maxLength>` of `max_length`: 8 kHz 16-bit mono
/// (16 000 bytes a second), plus 64 KiB for the header and any extra chunks.
pub fn max_download(max_length: Duration) -> usize {
    let secs = usize::try_from(max_length.as_secs()).unwrap_or(usize::MAX);
    secs.saturating_add(1)
        .saturating_mul(16_000)
        .saturating_add(64 * 1024)
}
/// Most times a job is claimed before it is given up on (transcription kept failing).
pub const MAX_CLAIMS: u32 = 10;

/// Download retry policy: `attempts` tries, waiting `base`, `2·base`, … (at most `max`) between.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Retry {
    /// Total attempts (at least 1).
    pub attempts: u32,
    /// First wait.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What the recording worker needs.
#[derive(Clone, Debug)]
pub struct RecordingConfig {
    /// `DATA_DIR`.
    pub data_dir: PathBuf,
    /// The Twilio REST client: downloads only from `TWILIO_API_URL`, with its credentials.
    pub twilio: TwilioClient,
    /// Largest download accepted, in bytes ([`max_download`] of `RECORD_MAX_LENGTH`).
    pub max_download: usize,
    /// The protocol agent (`AGENT_URL`) and its auth header, if any: transcribes recordings.
    pub agent: Option<(String, Option<(String, Secret)>)>,
    /// Download retries.
    pub retry: Retry,
    /// Longest wait for one download or one transcription.
    pub timeout: Duration,
    /// This worker's name on the leases it takes: `INSTANCE_ID` and a random suffix, unique
    /// per process.
    pub owner: String,
    /// `RECORDING_LEASE`: how long a claim holds without renewal.
    pub lease: Duration,
    /// How often an idle worker looks for jobs stored by other instances.
    pub poll: Duration,
}

impl RecordingConfig {
    /// From the server configuration (default retries, a 1 s poll).
    pub fn from_config(config: &Config) -> Result<Self, TwilioError> {
        Ok(Self {
            data_dir: config.data_dir.clone(),
            twilio: TwilioClient::new(&config.twilio)?,
            max_download: max_download(config.record_max_length),
            agent: config
                .agent
                .as_ref()
                .filter(|a| a.openai.is_none())
                .map(|a| (a.url.clone(), a.auth.clone())),
            retry: Retry::default(),
            timeout: Duration::from_secs(60),
            owner: format!("{}/{:08x}", config.instance_id, rand::random::<u32>()),
            lease: config.recording_lease,
            poll: Duration::from_secs(1),
        })
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The callback's `RecordingUrl` is not the configured API's address of the recording.
    #[error(
        "recording url {url:?} is not {expected}/2010-04-01/Accounts/{{AccountSid}}/Recordings/{{RecordingSid}} of this recording: refused"
    )]
    ForeignUrl {
        /// The URL in the callback (cut to 200 characters).
        url: String,
        /// The configured `TWILIO_API_URL`.
        expected: String,
    },
    /// The download failed.
    #[error("download failed: {0}")]
    Download(#[from] TwilioError),
    /// The body is not a 16-bit PCM mono WAV.
    #[error("recording is not a 16-bit pcm mono wav")]
    Wav,
    /// File I/O under `DATA_DIR`.
    #[error("cannot {0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The transcription exchange failed.
    #[error("transcription failed: {0}")]
    Transcribe(String),
}

impl RecordingError {
    /// Whether retrying could help (network errors, 5xx, 429, 404 before Twilio has the file).
    fn retryable(&self) -> bool {
        match self {
            Self::Download(e) => e.retryable(),
            _ => false,
        }
    }
}

/// Works the store's recording jobs until `stop` turns true: claims due jobs, oldest first,
/// and works up to [`CONCURRENCY`] of them at once; when none is due (or all slots are busy)
/// waits for a job to finish, for `wake` (a callback stored here) or for the poll interval
/// (one stored elsewhere, or a retry coming due). Jobs in progress when `stop` turns are
/// finished before it returns.
pub async fn run(
    config: RecordingConfig,
    store: Store,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let mut working: JoinSet<()> = JoinSet::new();
    let mut store_down = false;
    while !*stop.borrow() {
        while working.len() < CONCURRENCY {
            match claim(&config, &store).await {
                Ok(Some(job)) => {
                    store_down = false;
                    let (config, store) = (Arc::clone(&config), store.clone());
                    working.spawn(async move {
                        work(&config, &store, job).await;
                    });
                }
                Ok(None) => {
                    store_down = false;
                    break;
                }
                Err(e) => {
                    if !store_down {
                        tracing::error!(error = %e, "recording worker: store unavailable");
                    }
                    store_down = true;
                    break;
                }
            }
        }
        let full = working.len() >= CONCURRENCY;
        tokio::select! {
            Some(_) = working.join_next(), if !working.is_empty() => {}
            () = wake.notified(), if !full => {}
            () = tokio::time::sleep(config.poll), if !full => {}
            _ = stop.changed() => {}
        }
    }
    while working.join_next().await.is_some() {}
}

/// Claims one due job and works it; `None` when no job is due. Returns the job's
/// `RecordingSid` and where it stands after this claim.
pub async fn work_one(
    config: &RecordingConfig,
    store: &Store,
) -> Result<Option<(String, JobState)>, StoreError> {
    Ok(match claim(config, store).await? {
        Some(job) => Some(work(config, store, job).await),
        None => None,
    })
}

/// Claims the oldest due job with a lease; `None` when no job is due.
async fn claim(
    config: &RecordingConfig,
    store: &Store,
) -> Result<Option<RecordingJob>, StoreError> {
    let now = crate::clock::unix_ms();
    store
        .claim_recording(
            &config.owner,
            now,
            now + lease_ms(config),
            config.agent.is_some(),
        )
        .await
}

fn lease_ms(config: &RecordingConfig) -> u64 {
    u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX)
}

/// Works a claimed job while renewing its lease; returns its `RecordingSid` and where it
/// stands after this claim.
async fn work(config: &RecordingConfig, store: &Store, job: RecordingJob) -> (String, JobState) {
    let lease_ms = lease_ms(config);
    let sid = job.event.recording_sid.clone();
    let heartbeat = async {
        loop {
            tokio::time::sleep(config.lease / 3).await;
            let until = crate::clock::unix_ms() + lease_ms;
            match store.renew_lease(&sid, &config.owner, until).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(recording_sid = %sid, error = %e, "recording lease not renewed")
                }
            }
        }
    };
    tokio::select! {
        state = process(config, store, &job) => (sid, state),
        () = heartbeat => {
            tracing::warn!(recording_sid = %sid, "recording lease lost: another instance has the job");
            let state = job.state;
            (sid, state)
        }
    }
}

/// Works one claimed job: fetch (unless this instance has the file already), then
/// transcribe (when an agent is configured). Returns where the job stands.
async fn process(config: &RecordingConfig, store: &Store, job: &RecordingJob) -> JobState {
    let rec = &job.event;
    let update = |update: JobUpdate| async move {
        match store
            .update_recording(
                &rec.recording_sid,
                &config.owner,
                &update,
                crate::clock::unix_ms(),
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(recording_sid = %rec.recording_sid, "recording job taken over by another instance: update dropped")
            }
            Err(e) => {
                tracing::error!(recording_sid = %rec.recording_sid, error = %e, "recording progress not stored (the job is retried after its lease)")
            }
        }
    };
    if !safe_sid(&rec.recording_sid) {
        tracing::warn!(call_sid = %rec.call_sid, "recording without a usable RecordingSid: not fetched");
        update(JobUpdate::Failed {
            error: "unusable RecordingSid".to_owned(),
        })
        .await;
        return JobState::Failed;
    }
    let rel = format!("recordings/{}.wav", rec.recording_sid);
    let path = config.data_dir.join(&rel);
    let local = match &job.file {
        Some(_) => tokio::fs::read(&path).await.ok(),
        None => None,
    };
    let wav = match local {
        Some(bytes) => bytes,
        None => match fetch_with_retries(config, rec).await {
            Ok((bytes, attempts)) => {
                if let Err(e) = save(&path, &bytes).await {
                    tracing::warn!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, error = %e, "RECORDING_FAILED");
                    update(JobUpdate::Released {
                        retry_at_unix_ms: retry_at(config, job),
                        error: e.to_string(),
                    })
                    .await;
                    return JobState::Pending;
                }
                update(JobUpdate::Fetched { file: rel.clone() }).await;
                tracing::info!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, attempts, bytes = bytes.len(), "RECORDING_FETCHED");
                bytes
            }
            Err((e, attempts)) => {
                tracing::warn!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, attempts, error = %e, "RECORDING_FAILED");
                update(JobUpdate::Failed {
                    error: e.to_string(),
                })
                .await;
                return JobState::Failed;
            }
        },
    };
    let Some((url, auth)) = &config.agent else {
        update(JobUpdate::Kept).await;
        return JobState::Fetched;
    };
    let error = match tokio::time::timeout(
        config.timeout,
        transcribe(url, auth.as_ref(), rec, &wav),
    )
    .await
    {
        Ok(Ok(text)) => {
            tracing::info!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, text = %text, "STT_FINAL");
            update(JobUpdate::Transcribed { transcript: text }).await;
            return JobState::Transcribed;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "transcription timed out".to_owned(),
    };
    if job.claims >= MAX_CLAIMS {
        tracing::warn!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, claims = job.claims, error, "recording not transcribed: given up");
        update(JobUpdate::Failed {
            error: format!("not transcribed after {} claims: {error}", job.claims),
        })
        .await;
        return JobState::Failed;
    }
    tracing::warn!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, claims = job.claims, error, "recording not transcribed (retried later)");
    update(JobUpdate::Released {
        retry_at_unix_ms: retry_at(config, job),
        error,
    })
    .await;
    JobState::Fetched
}

/// When a released job may be claimed again: the retry backoff after this many claims.
fn retry_at(config: &RecordingConfig, job: &RecordingJob) -> u64 {
    let wait = config.retry.backoff(job.claims);
    crate::clock::unix_ms() + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
}

fn safe_sid(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn save(path: &Path, bytes: &[u8]) -> Result<(), RecordingError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| RecordingError::Io("create recordings dir", e))?;
    }
    let tmp = path.with_extension("wav.part");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| RecordingError::Io("create recording", e))?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes)
        .await
        .map_err(|e| RecordingError::Io("write recording", e))?;
    file.sync_all()
        .await
        .map_err(|e| RecordingError::Io("sync recording", e))?;
    drop(file);
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| RecordingError::Io("rename recording", e))?;
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent() {
        let dir = tokio::fs::File::open(dir)
            .await
            .map_err(|e| RecordingError::Io("open recordings dir", e))?;
        dir.sync_all()
            .await
            .map_err(|e| RecordingError::Io("sync recordings dir", e))?;
    }
    Ok(())
}

async fn fetch_with_retries(
    config: &RecordingConfig,
    rec: &RecordingEvent,
) -> Result<(Vec<u8>, u32), (RecordingError, u32)> {
    // Only the configured API's own address of this very recording is fetched: a callback
    // naming any other host, port, scheme or path gets no connection (and no credentials).
    if !config
        .twilio
        .is_recording_url(&rec.recording_url, &rec.account_sid, &rec.recording_sid)
    {
        let error = RecordingError::ForeignUrl {
            url: rec.recording_url.chars().take(200).collect(),
            expected: config.twilio.api_url().to_string(),
        };
        return Err((error, 0));
    }
    let attempts = config.retry.attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        let download = config.twilio.download_recording(
            &rec.account_sid,
            &rec.recording_sid,
            config.max_download,
        );
        let result = match tokio::time::timeout(config.timeout, download).await {
            Ok(r) => r.map_err(RecordingError::from),
            Err(_) => Err(RecordingError::Download(TwilioError::Http(format!(
                "timed out after {:?}",
                config.timeout
            )))),
        };
        match result {
            Ok(bytes) => match parse_wav(&bytes) {
                Ok(_) => return Ok((bytes.to_vec(), n)),
                Err(e) => return Err((e, n)),
            },
            Err(e) if e.retryable() && n < attempts => {
                tracing::info!(call_sid = %rec.call_sid, recording_sid = %rec.recording_sid, attempt = n, error = %e, "recording download retried");
                tokio::time::sleep(config.retry.backoff(n)).await;
            }
            Err(e) => return Err((e, n)),
        }
    }
}

/// The samples of a 16-bit PCM mono WAV, as Twilio serves recordings.
pub fn parse_wav(bytes: &[u8]) -> Result<Pcm16, RecordingError> {
    match Pcm16::read(bytes) {
        Ok(pcm) if pcm.channels == 1 => Ok(pcm),
        _ => Err(RecordingError::Wav),
    }
}

/// Offers the recording to the agent; returns the final transcript.
async fn transcribe(
    url: &str,
    auth: Option<&(String, Secret)>,
    rec: &RecordingEvent,
    wav: &[u8],
) -> Result<String, RecordingError> {
    let err = |e: String| RecordingError::Transcribe(e);
    let Pcm16 { rate, samples, .. } = parse_wav(wav)?;
    let mut request = url.into_client_request().map_err(|e| err(e.to_string()))?;
    if let Some((name, value)) = auth {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| err("bad header".into()))?;
        let mut value =
            HeaderValue::from_str(value.expose()).map_err(|_| err("bad header".into()))?;
        value.set_sensitive(true);
        request.headers_mut().insert(name, value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| err(e.to_string()))?;
    let duration_s = samples.len() as u64 / u64::from(rate.max(1));
    let start = protocol::recording(&rec.call_sid, &rec.recording_sid, duration_s, rate);
    ws.send(Message::text(start))
        .await
        .map_err(|e| err(e.to_string()))?;
    // One second of audio per message, 16-bit little-endian.
    for part in samples.chunks((rate as usize).max(1)) {
        let bytes: Vec<u8> = part.iter().flat_map(|s| s.to_le_bytes()).collect();
        ws.send(Message::binary(bytes))
            .await
            .map_err(|e| err(e.to_string()))?;
    }
    ws.send(Message::text(protocol::RECORDING_END))
        .await
        .map_err(|e| err(e.to_string()))?;
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| err(e.to_string()))? {
            Message::Text(text) => {
                if let Ok(FromAgent::Transcript {
                    is_final: true,
                    text,
                }) = protocol::parse(&text)
                {
                    let _ = ws.close(None).await;
                    return Ok(text);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Err(err("the agent closed without a final transcript".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wav::tests::wav;

    #[test]
    fn only_16_bit_mono_pcm_is_taken() {
        let w = wav(8_000, 1, 16, &[1, -2, 3]);
        let pcm = parse_wav(&w).unwrap();
        assert_eq!((pcm.rate, pcm.samples), (8_000, vec![1, -2, 3]));
        assert!(matches!(
            parse_wav(&wav(8_000, 2, 16, &[1, 2])),
            Err(RecordingError::Wav)
        ));
        assert!(matches!(
            parse_wav(&wav(8_000, 1, 8, &[1])),
            Err(RecordingError::Wav)
        ));
        assert!(matches!(parse_wav(b"RIFF"), Err(RecordingError::Wav)));
        assert!(matches!(parse_wav(&w[..30]), Err(RecordingError::Wav)));
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let r = Retry {
            attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(4), Duration::from_millis(800));
        assert_eq!(r.backoff(5), Duration::from_secs(1));
        assert_eq!(r.backoff(200), Duration::from_secs(1));
    }
}
