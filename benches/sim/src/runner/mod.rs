//! Scenarios, concurrent calls with a ramp, capacity mode and the `handset-sim` command line.
//!
//! Every scenario is a [`Script`] (what each caller says and when) played by some number of
//! calls against each server named with `--target`, one server after the other (so they never
//! compete for the CPU), in one run. Each call is one tokio task; calls start evenly spread
//! over the ramp. While a group runs, the server's `/proc` (with `--server-pid`) and the
//! simulator's own are sampled every 250 ms.
//!
//! | scenario | what the caller does | what it shows |
//! |---|---|---|
//! | `single` | one call: speaks at 2 s, then every 5 s | pacing, response latency, marks |
//! | `load` | `--calls` such calls, started over `--ramp` | the same under load |
//! | `barge-in` | talks over the greeting, then over the echo, then waits for one | barge-in latency, stale audio |
//! | `silence` | says nothing | greeting only; no false barge-in |
//! | `hold` | plays hold music (not speech) throughout | false barge-ins, unprompted playback |
//! | `speakerphone` | the `single` conversation on a line that returns what it plays (250 ms, −12 dB) | false barge-ins and unprompted playback from the agent's own voice |
//! | `dtmf` | speaks, keys `1`, `2`, `3`, `#` during and between playbacks | DTMF handling, DTMF → `clear` |
//! | `long` | the `single` conversation for `--duration` (default 5 min) | drift, memory |
//! | `capacity` | steps of `--capacity-step` more calls until a limit breaks | highest clean concurrency |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::client::{CallPlan, run_call};
use super::observer::CallMetrics;
use super::procfs::{self, Sampler};
use super::report::{self, CapacityReport, CapacityStep, GroupReport, Usage};
use super::script::{self, Impairments, LineEcho, Script};
use super::svg;
use super::wire::{self, Capture, WireError};

/// The built-in caller speech: "hello world", 8 kHz µ-law (see `tests/data/NOTICE`).
const DEFAULT_SPEECH: &[u8] = include_bytes!("../../../../tests/data/hello-world.ulaw");
/// Hold music used when `--music` is not given (installed by `scripts/install-audio-data.sh`).
const DEFAULT_MUSIC: &str = "/usr/share/asterisk/moh/macroform-cold_day.wav";
/// Time between the starts of a conversation's utterances.
const TURN: Duration = Duration::from_secs(5);
/// `/proc` sampling period.
const SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// A scenario.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One call: speech at 2 s, then every 5 s.
    Single,
    /// `--calls` concurrent calls of the single conversation, started over `--ramp`.
    Load,
    /// Speech over the greeting, then over the echo, then a normal turn.
    BargeIn,
    /// Silence only.
    Silence,
    /// Hold music only.
    Hold,
    /// The single conversation on a speakerphone: the line returns what it plays.
    Speakerphone,
    /// Conversation with DTMF keys during and between playbacks.
    Dtmf,
    /// The conversation for `--duration` (default 300 s).
    Long,
    /// Steps of concurrency until pacing p99 exceeds the limit or any underrun.
    Capacity,
}

/// Where capacity mode reads its pacing limit.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum)]
pub enum PaceBy {
    /// When the simulator read each message.
    App,
    /// When each message crossed the wire (needs `--wire-capture`).
    Wire,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Load => "load",
            Self::BargeIn => "barge-in",
            Self::Silence => "silence",
            Self::Hold => "hold",
            Self::Speakerphone => "speakerphone",
            Self::Dtmf => "dtmf",
            Self::Long => "long",
            Self::Capacity => "capacity",
        }
    }
}

/// `handset-sim`: plays Twilio against Media Streams servers and reports what callers heard.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Scenarios, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "single")]
    pub scenario: Vec<Scenario>,
    /// A server as NAME=WEBHOOK_URL (repeat to compare servers side by side)
    /// [default: handset=http://127.0.0.1:3000/webhook/incoming_call].
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// A server's process id for CPU and memory, as NAME=PID (or a bare PID for the first target).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<String>,
    /// Twilio auth token used to sign the webhook and the WebSocket handshake.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Concurrent calls in the `load` scenario.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Calls in every other scenario (except capacity), run concurrently.
    #[arg(long, default_value_t = 1)]
    pub calls_each: usize,
    /// Seconds over which a group's calls start (evenly spread).
    #[arg(long, default_value_t = 5.0)]
    pub ramp: f64,
    /// Call length in seconds (default per scenario: single/dtmf 12, load 20, silence 10,
    /// hold 20, long 300; barge-in is fixed by its script).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Caller speech: 8 kHz 16-bit WAV or raw µ-law [default: built-in "hello world"].
    #[arg(long)]
    pub speech: Option<PathBuf>,
    /// Hold music: 8 kHz 16-bit WAV [default: /usr/share/asterisk/moh/macroform-cold_day.wav].
    #[arg(long)]
    pub music: Option<PathBuf>,
    /// Impairment: send caller frames in bursts of this many.
    #[arg(long, default_value_t = 0)]
    pub burst: u32,
    /// Impairment: random extra delay per caller frame, up to this many ms (order kept).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Impairment: probability of skipping a caller chunk.
    #[arg(long, default_value_t = 0.0)]
    pub skip: f64,
    /// Seed for the impairments (call `i` uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Capacity: first step's concurrency.
    #[arg(long, default_value_t = 100)]
    pub capacity_start: usize,
    /// Capacity: concurrency added per step.
    #[arg(long, default_value_t = 100)]
    pub capacity_step: usize,
    /// Capacity: stop after this concurrency even if nothing broke.
    #[arg(long, default_value_t = 3_000)]
    pub capacity_max: usize,
    /// Capacity: seconds every call of a step overlaps with all others.
    #[arg(long, default_value_t = 10.0)]
    pub capacity_hold: f64,
    /// Capacity: calls started per second.
    #[arg(long, default_value_t = 100.0)]
    pub ramp_rate: f64,
    /// Capacity: the pacing limit, interval error p99 in ms.
    #[arg(long, default_value_t = 2.0)]
    pub pacing_limit_ms: f64,
    /// Calls per server drawn in each scenario's timeline.
    #[arg(long, default_value_t = 4)]
    pub timeline_calls: usize,
    /// Directory for report.json, report.md and the pictures.
    #[arg(long, default_value = "sim-report")]
    pub out: PathBuf,
    /// Simulator threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also measure outbound pacing at the wire: run tcpdump on this interface (`lo` for a
    /// server on this machine) while each group or capacity step runs, capturing the server's
    /// segments from the target's webhook port. Needs tcpdump and root or CAP_NET_RAW.
    #[arg(long, value_name = "IFACE")]
    pub wire_capture: Option<String>,
    /// Keep the wire captures (`<out>/wire-*.pcap`) instead of deleting each once it is read.
    #[arg(long)]
    pub wire_keep: bool,
    /// Capacity: read interval error p99 and underruns from the simulator (`app`) or from the
    /// wire capture (`wire`) [default: wire with --wire-capture, else app].
    #[arg(long, value_enum)]
    pub pace_by: Option<PaceBy>,
}

impl SimArgs {
    /// The defaults, as if `handset-sim` were run with no flags (the environment still counts).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: SimArgs,
        }
        <Wrapper as clap::Parser>::parse_from(["sim"]).args
    }
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A command-line value is wrong.
    #[error("{0}")]
    Args(String),
    /// An audio file could not be used.
    #[error(transparent)]
    Audio(#[from] script::AudioError),
    /// Output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The wire capture failed.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// `--wire-capture` settings for a run.
#[derive(Clone, Debug)]
pub struct WireRun {
    /// The interface tcpdump listens on.
    pub iface: String,
    /// Where the pcap files go.
    pub dir: PathBuf,
    /// Keep the pcap files.
    pub keep: bool,
}

/// The TCP port of a target's webhook URL (the stream is expected on the same port).
fn webhook_port(url: &str) -> Result<u16, RunError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| RunError::Args(format!("bad webhook url {url:?}: {e}")))?;
    Ok(uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    }))
}

/// A server under test.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Short name for tables.
    pub name: String,
    /// Its voice webhook.
    pub webhook_url: String,
    /// Its process, for `/proc`.
    pub pid: Option<u32>,
}

/// Parses `--target` and `--server-pid` values.
pub fn parse_targets(targets: &[String], pids: &[String]) -> Result<Vec<Target>, RunError> {
    let mut out: Vec<Target> = if targets.is_empty() {
        vec![Target {
            name: "handset".to_owned(),
            webhook_url: "http://127.0.0.1:3000/webhook/incoming_call".to_owned(),
            pid: None,
        }]
    } else {
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| match t.split_once('=') {
                Some((name, url)) if !name.is_empty() && url.contains("://") => Ok(Target {
                    name: name.to_owned(),
                    webhook_url: url.to_owned(),
                    pid: None,
                }),
                _ if t.contains("://") => Ok(Target {
                    name: format!("server{}", i + 1),
                    webhook_url: t.clone(),
                    pid: None,
                }),
                _ => Err(RunError::Args(format!(
                    "--target {t:?}: expected NAME=WEBHOOK_URL"
                ))),
            })
            .collect::<Result<_, _>>()?
    };
    for p in pids {
        let (name, pid) = p.split_once('=').unwrap_or(("", p.as_str()));
        let pid: u32 = pid
            .parse()
            .map_err(|_| RunError::Args(format!("--server-pid {p:?}: expected NAME=PID or PID")))?;
        let target = if name.is_empty() {
            out.first_mut()
        } else {
            out.iter_mut().find(|t| t.name == name)
        }
        .ok_or_else(|| RunError::Args(format!("--server-pid {p:?}: no target named {name:?}")))?;
        target.pid = Some(pid);
    }
    Ok(out)
}

/// The caller side of a conversation: an utterance at 2 s and then every turn while it fits.
pub fn conversation(speech: &[i16], duration: Duration) -> Script {
    let clip = Duration::from_millis(speech.len() as u64 / 8);
    let turn = TURN.max(clip * 2 + Duration::from_millis(2_500));
    let mut script = Script::silent(duration);
    let mut at = Duration::from_secs(2);
    while at + clip + Duration::from_millis(2_500) <= duration {
        script.place(at, speech, true);
        at += turn;
    }
    script
}

/// The single conversation on a line that returns what it plays 250 ms later at −12 dB, as a
/// speakerphone does.
pub fn speakerphone_script(speech: &[i16]) -> Script {
    let mut script = conversation(speech, Duration::from_secs(12));
    script.echo = Some(LineEcho {
        delay: Duration::from_millis(250),
        gain: 0.25,
    });
    script
}

/// Talks over the greeting (onset 300 ms), over the echo of that (saying something else), then
/// takes a normal turn.
pub fn barge_in_script(speech: &[i16]) -> Script {
    let (first, last) = script::speech_frames(speech).unwrap_or((0, 0));
    let lead = Duration::from_millis(first as u64 * 20);
    let voiced = Duration::from_millis((last + 1 - first) as u64 * 20);
    let mut script = Script::default();
    // Onset 300 ms into the greeting.
    let onset1 = Duration::from_millis(300);
    script.place(onset1.saturating_sub(lead), speech, true);
    // The echo starts about 0.6 s after the caller stops; talk 0.4 s into it, saying something
    // else (the clip backwards): the clip itself would be the agent's own audio coming back
    // 0.4 s late, which the echo-reference check rightly holds as echo.
    let backwards: Vec<i16> = speech.iter().rev().copied().collect();
    let (back_first, _) = script::speech_frames(&backwards).unwrap_or((0, 0));
    let back_lead = Duration::from_millis(back_first as u64 * 20);
    let onset2 = onset1 + voiced + Duration::from_millis(1_000);
    script.place(onset2.saturating_sub(back_lead), &backwards, true);
    // A normal turn once that echo has played.
    let onset3 = onset2 + voiced * 3 + Duration::from_millis(3_000);
    script.place(onset3.saturating_sub(lead), speech, true);
    script.duration = onset3 + voiced * 2 + Duration::from_millis(3_000);
    script
}

/// Hold music from the start for `duration` (looped; not speech).
pub fn hold_script(music: &[i16], duration: Duration) -> Script {
    let mut script = Script::silent(duration);
    if !music.is_empty() {
        let mut at = Duration::ZERO;
        let len = Duration::from_millis(music.len() as u64 / 8);
        while at < duration {
            script.place(at, music, false);
            at += len;
        }
    }
    script
}

/// The conversation with keys during the greeting, during an echo and in silence.
pub fn dtmf_script(speech: &[i16], duration: Duration) -> Script {
    let mut script = conversation(speech, duration);
    let echo_at = script
        .utterances
        .first()
        .map_or(Duration::from_secs(4), |u| {
            u.end + Duration::from_millis(900)
        });
    script.key(Duration::from_millis(600), '1');
    script.key(echo_at, '2');
    script.key(echo_at + Duration::from_millis(200), '3');
    script.key(duration.saturating_sub(Duration::from_secs(1)), '#');
    script
}

/// Runs `calls` calls of `script` against `target`, started evenly over `ramp`. Server memory
/// per call is measured above `baseline` (default: the server's `VmRSS` just before the group).
#[allow(clippy::too_many_arguments)]
pub async fn run_group(
    scenario: &str,
    target: &Target,
    script: &Script,
    calls: usize,
    ramp: Duration,
    auth_token: Option<&str>,
    impair: &Impairments,
    timeline_calls: usize,
    baseline: Option<procfs::ProcSample>,
    wire: Option<&WireRun>,
) -> Result<GroupReport, RunError> {
    let frames = Arc::new(script.frames());
    let audio = Arc::new(script.audio.clone());
    let port = webhook_port(&target.webhook_url)?;
    let capture = match wire {
        Some(w) => {
            let name: String = format!("wire-{scenario}-{}-{calls}.pcap", target.name)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = w.dir.join(name);
            Some((Capture::start(&w.iface, &[port], &path).await?, path))
        }
        None => None,
    };
    let idle = baseline.or_else(|| target.pid.and_then(procfs::sample));
    let server = target
        .pid
        .map(|pid| (pid, Sampler::start(pid, SAMPLE_PERIOD)));
    let me = Sampler::start(0, SAMPLE_PERIOD);
    let run_id = rand::random::<u32>();
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..calls {
        let mut plan = CallPlan::new(target.webhook_url.clone());
        plan.auth_token = auth_token.map(str::to_owned);
        plan.call_sid = format!("CA{run_id:08x}{i:024x}");
        plan.frames = Some(frames.clone());
        plan.utterances.clone_from(&script.utterances);
        plan.echo = script.echo;
        if script.echo.is_some() {
            plan.audio = Arc::clone(&audio);
        }
        plan.dtmf.clone_from(&script.dtmf);
        plan.duration = script.duration;
        plan.impair = Impairments {
            seed: impair.seed.wrapping_add(i as u64),
            ..impair.clone()
        };
        plan.record_playback = false;
        plan.keep_log = false;
        plan.keep_timeline = i < timeline_calls;
        // Spread the calls' 20 ms phases evenly (golden-ratio stride): starts on a round
        // ramp step would otherwise put every call's frames on a few instants of the cycle.
        let phase = Duration::from_micros(((i as f64 * 0.618_034).fract() * 20_000.0) as u64);
        let begin = start + ramp.mul_f64(i as f64 / calls.max(1) as f64) + phase;
        set.spawn(async move {
            tokio::time::sleep_until(begin).await;
            let sid = plan.call_sid.clone();
            let outcome = run_call(plan).await;
            (i, sid, outcome)
        });
    }
    let mut metrics: Vec<Option<CallMetrics>> = vec![None; calls];
    while let Some(joined) = set.join_next().await {
        let Ok((i, sid, outcome)) = joined else {
            continue;
        };
        metrics[i] = Some(match outcome {
            Ok(o) => o.metrics,
            Err(e) => CallMetrics {
                call_sid: sid,
                failure: Some(e.to_string()),
                ..CallMetrics::default()
            },
        });
    }
    let wall = start.elapsed().as_secs_f64();
    let mut metrics: Vec<CallMetrics> = metrics
        .into_iter()
        .map(|m| {
            m.unwrap_or_else(|| CallMetrics {
                failure: Some("call task panicked".to_owned()),
                ..CallMetrics::default()
            })
        })
        .collect();
    let wire_group = match capture {
        Some((capture, path)) => {
            let stats = capture.stop().await?;
            let contents = wire::read_pcap_file(&path, &[port])?;
            let group = wire::join(&mut metrics, &contents, stats, |i| i < timeline_calls);
            if !wire.is_some_and(|w| w.keep) {
                let _ = std::fs::remove_file(&path);
            }
            for problem in group.problems() {
                eprintln!(
                    "handset-sim: wire capture of {scenario} against {}: {problem}",
                    target.name
                );
            }
            Some(group)
        }
        None => None,
    };
    let mut group = GroupReport::aggregate(scenario, &target.name, metrics, wall);
    group.wire = wire_group;
    if let Some((pid, sampler)) = server {
        let series = sampler.snapshot(pid);
        let end = sampler.now();
        let peak = series.peak_rss_kib(0.0, end);
        group.server = Usage {
            cpu_percent: series.cpu_percent(0.0, end),
            rss_idle_kib: idle.map(|s| s.rss_kib),
            rss_peak_kib: peak,
            kib_per_call: idle
                .zip(peak)
                .map(|(i, p)| p.saturating_sub(i.rss_kib) as f64 / calls.max(1) as f64),
        };
    }
    let series = me.snapshot(0);
    let end = me.now();
    group.simulator = Usage {
        cpu_percent: series.cpu_percent(0.0, end),
        rss_idle_kib: series.samples.first().map(|(_, s)| s.rss_kib),
        rss_peak_kib: series.peak_rss_kib(0.0, end),
        kib_per_call: None,
    };
    Ok(group)
}

/// Capacity mode against one server.
pub async fn capacity(
    target: &Target,
    speech: &[i16],
    args: &SimArgs,
    impair: &Impairments,
    wire: Option<&WireRun>,
) -> Result<CapacityReport, RunError> {
    let by_wire = wire.is_some() && args.pace_by != Some(PaceBy::App);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut steps = Vec::new();
    let mut calls = args.capacity_start.max(1);
    // Memory per call is measured above the server's footprint before the first step (the
    // allocator keeps what earlier steps used, so each step's own start would understate it).
    let baseline = target.pid.and_then(procfs::sample);
    loop {
        let ramp = Duration::from_secs_f64(calls as f64 / args.ramp_rate.max(1.0));
        let script = conversation(speech, ramp + Duration::from_secs_f64(args.capacity_hold));
        eprintln!("handset-sim: capacity {}: {calls} calls", target.name);
        let mut group = run_group(
            "capacity",
            target,
            &script,
            calls,
            ramp,
            args.auth_token.as_deref(),
            impair,
            0,
            baseline,
            wire,
        )
        .await?;
        group.per_call.clear();
        let mut broke = Vec::new();
        if group.failed > 0 {
            broke.push(format!("{} calls failed", group.failed));
        }
        // The pacing figures: at the wire when it is captured (and chosen), else as read.
        let (p99, underruns, at) = match (&group.wire, by_wire) {
            (Some(w), true) => {
                if !w.complete() {
                    broke.push(format!(
                        "wire capture incomplete: {}",
                        w.problems().join(", ")
                    ));
                }
                (w.interval_error.p99_ms, w.underruns, "wire ")
            }
            _ => (group.interval_error.p99_ms, group.underruns, ""),
        };
        if underruns > 0 {
            broke.push(format!("{underruns} {at}underruns"));
        }
        if p99 > args.pacing_limit_ms {
            broke.push(format!(
                "{at}interval error p99 {p99:.2} ms > {} ms",
                args.pacing_limit_ms
            ));
        }
        let clean = broke.is_empty();
        eprintln!(
            "handset-sim:   {at}p99 {p99:.2} ms (as read {:.2} ms), {at}underruns {underruns}, failed {}, server CPU {:?} %: {}",
            group.interval_error.p99_ms,
            group.failed,
            group.server.cpu_percent.map(|c| c.round()),
            if clean {
                "clean".to_owned()
            } else {
                broke.join(", ")
            }
        );
        steps.push(CapacityStep {
            calls,
            clean,
            broke: (!clean).then(|| broke.join(", ")),
            group,
        });
        if !clean || calls + args.capacity_step > args.capacity_max || args.capacity_step == 0 {
            break;
        }
        calls += args.capacity_step;
        // Let the server settle between steps.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let best = steps.iter().rev().find(|s| s.clean);
    Ok(CapacityReport {
        target: target.name.clone(),
        pacing_limit_ms: args.pacing_limit_ms,
        paced_by: if by_wire { "wire" } else { "app" },
        highest_clean: best.map_or(0, |s| s.calls),
        calls_per_core: best.map_or(0.0, |s| s.calls as f64 / cores as f64),
        cores,
        server_kib_per_call: best.and_then(|s| s.group.server.kib_per_call),
        steps,
    })
}

/// Everything a run produced.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The servers.
    pub targets: Vec<Target>,
    /// CPU cores of this machine.
    pub cores: usize,
    /// One entry per scenario and server.
    pub groups: Vec<GroupReport>,
    /// Capacity mode, one entry per server.
    pub capacity: Vec<CapacityReport>,
}

fn write(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(|source| RunError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Runs the scenarios of `args` and writes the report; returns it.
pub async fn run(args: SimArgs) -> Result<RunReport, RunError> {
    let targets = parse_targets(&args.targets, &args.server_pids)?;
    let speech = match &args.speech {
        Some(p) => script::load_audio(p)?,
        None => script::decode_mulaw(DEFAULT_SPEECH),
    };
    if script::speech_frames(&speech).is_none() {
        return Err(RunError::Args("the speech file is silent".to_owned()));
    }
    let impair = Impairments {
        burst: args.burst,
        jitter: Duration::from_secs_f64(args.jitter_ms.max(0.0) / 1000.0),
        skip: args.skip,
        seed: args.seed,
    };
    std::fs::create_dir_all(&args.out).map_err(|source| RunError::Write {
        path: args.out.display().to_string(),
        source,
    })?;
    if args.pace_by == Some(PaceBy::Wire) && args.wire_capture.is_none() {
        return Err(RunError::Args(
            "--pace-by wire needs --wire-capture IFACE".to_owned(),
        ));
    }
    let wire = args.wire_capture.as_ref().map(|iface| WireRun {
        iface: iface.clone(),
        dir: args.out.clone(),
        keep: args.wire_keep,
    });
    let wire = wire.as_ref();
    let secs = |default: f64| Duration::from_secs_f64(args.duration.unwrap_or(default));
    let ramp = Duration::from_secs_f64(args.ramp.max(0.0));
    let mut groups = Vec::new();
    let mut capacity_reports = Vec::new();
    for &scenario in &args.scenario {
        let (script, calls) = match scenario {
            Scenario::Single => (conversation(&speech, secs(12.0)), args.calls_each),
            Scenario::Load => (conversation(&speech, secs(20.0)), args.calls),
            Scenario::BargeIn => (barge_in_script(&speech), args.calls_each),
            Scenario::Silence => (Script::silent(secs(10.0)), args.calls_each),
            Scenario::Hold => {
                let music =
                    script::load_audio(args.music.as_deref().unwrap_or(Path::new(DEFAULT_MUSIC)))?;
                (hold_script(&music, secs(20.0)), args.calls_each)
            }
            Scenario::Dtmf => (dtmf_script(&speech, secs(12.0)), args.calls_each),
            Scenario::Speakerphone => (speakerphone_script(&speech), args.calls_each),
            Scenario::Long => (conversation(&speech, secs(300.0)), args.calls_each),
            Scenario::Capacity => {
                for target in &targets {
                    capacity_reports.push(capacity(target, &speech, &args, &impair, wire).await?);
                }
                write(
                    &args.out.join("capacity.svg"),
                    &svg::capacity_picture(&capacity_reports),
                )?;
                continue;
            }
        };
        let mut these = Vec::new();
        for target in &targets {
            eprintln!(
                "handset-sim: {} against {}: {calls} calls of {:.1} s",
                scenario.name(),
                target.name,
                script.duration.as_secs_f64()
            );
            let group_ramp = if calls > 1 { ramp } else { Duration::ZERO };
            these.push(
                run_group(
                    scenario.name(),
                    target,
                    &script,
                    calls,
                    group_ramp,
                    args.auth_token.as_deref(),
                    &impair,
                    args.timeline_calls,
                    None,
                    wire,
                )
                .await?,
            );
        }
        let refs: Vec<&GroupReport> = these.iter().collect();
        write(
            &args.out.join(format!("{}.svg", scenario.name())),
            &svg::scenario_picture(&refs, args.timeline_calls),
        )?;
        groups.extend(these);
    }
    let report = RunReport {
        targets,
        cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        groups,
        capacity: capacity_reports,
    };
    let mut text = String::new();
    if !report.groups.is_empty() {
        text.push_str(&report::table(&report.groups));
    }
    if !report.capacity.is_empty() {
        text.push('\n');
        text.push_str(&report::capacity_table(&report.capacity));
    }
    write(&args.out.join("report.md"), &text)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| RunError::Write {
        path: "report.json".to_owned(),
        source: std::io::Error::other(e),
    })?;
    write(&args.out.join("report.json"), &json)?;
    println!("{text}");
    println!("report: {}", args.out.join("report.json").display());
    Ok(report)
}

/// `handset-sim` entry point: builds the runtime and runs.
pub fn run_cli(args: SimArgs) -> Result<RunReport, RunError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.enable_all().build().map_err(RunError::Runtime)?;
    runtime.block_on(run(args))
}

#[cfg(test)]
mod tests;
