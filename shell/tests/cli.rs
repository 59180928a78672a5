//! The built `handset` binary: configuration errors exit non-zero with a clear message, and a
//! running server answers and stops gracefully on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn handset() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handset"));
    cmd.env_clear();
    cmd
}

#[test]
fn bad_public_url_exits_2_with_the_variable_and_value() {
    let out = handset()
        .env("PUBLIC_URL", "voice.example.com/path?x=1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "PUBLIC_URL must be an absolute http(s) URL without a path, query string, fragment or credentials: got \"voice.example.com/path?x=1\""
        ),
        "{stderr}"
    );
}

#[test]
fn empty_auth_token_and_bad_port_flag_are_refused() {
    let out = handset().env("TWILIO_AUTH_TOKEN", "").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TWILIO_AUTH_TOKEN is set but empty"));

    let out = handset()
        .args(["serve", "--port", "99999"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

/// Someone else's variable that is not UTF-8 does not stop the server from reading its own; one
/// of Handset's that is not UTF-8 is refused with its name.
#[cfg(unix)]
#[test]
fn a_variable_that_is_not_utf8_is_ignored_unless_it_is_ours() {
    use std::os::unix::ffi::OsStrExt as _;
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = handset()
        .env("SOMEONE_ELSES", latin1)
        .env("PUBLIC_URL", "voice.example.com/path")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PUBLIC_URL must be"), "{stderr}");

    let out = handset().env("PORT", latin1).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PORT must be"), "{stderr}");
}

#[test]
fn help_lists_the_serve_subcommand() {
    let out = handset().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
}

#[cfg(unix)]
#[test]
fn server_answers_healthz_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("handset-cli-{}", std::process::id()));
    let mut child = handset()
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "json"])
        .env("DATA_DIR", &dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
            && json["message"] == "handset listening"
        {
            addr = json["listen"].as_str().map(str::to_owned);
        }
        line.clear();
    }
    let addr = addr.expect("the server logs its listen address");

    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"signature_checks\":false"), "{reply}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit on SIGTERM, got {exit:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("SIGTERM received"), "{rest}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls the log file at `path` until it contains `needle`; panics past `deadline`.
#[cfg(unix)]
// A test of the whole process: it polls the log file with a wall-clock bound.
#[allow(clippy::disallowed_methods)]
fn wait_for_log(path: &std::path::Path, needle: &str, deadline: std::time::Instant) {
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never logged {needle:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends SIGTERM and expects a clean exit.
fn stop_with_sigterm(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

/// Runs the server with its stderr going to a file, as `handset serve 2>file` does, until it
/// has logged that it listens; stops it with SIGTERM and returns the whole log.
#[cfg(unix)]
// A test of the whole process: it polls the log file with a wall-clock bound.
#[allow(clippy::disallowed_methods)]
fn text_log_into_a_file(log_color: Option<&str>) -> Vec<u8> {
    use std::time::{Duration, Instant};

    let tag = log_color.unwrap_or("unset");
    let dir = std::env::temp_dir().join(format!("handset-cli-color-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = handset();
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "text"])
        .env("DATA_DIR", dir.join("data"))
        .stderr(log);
    if let Some(value) = log_color {
        cmd.env("LOG_COLOR", value);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_for_log(&log_path, "handset listening", deadline);
    stop_with_sigterm(&mut child);
    let bytes = std::fs::read(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

#[cfg(unix)]
#[test]
fn text_log_into_a_file_has_no_colour_codes_unless_log_color_is_always() {
    const ESC: u8 = 0x1b;
    for setting in [None, Some("auto"), Some("never")] {
        let log = text_log_into_a_file(setting);
        assert!(
            !log.contains(&ESC),
            "LOG_COLOR={setting:?} wrote an escape byte into the file:\n{}",
            String::from_utf8_lossy(&log)
        );
    }
    assert!(
        text_log_into_a_file(Some("always")).contains(&ESC),
        "LOG_COLOR=always colours even a file"
    );
}

/// Log injection, end to end on the binary with text logs, signature checks off and
/// `LOG_PII=full` (the widest the logs open): a `From` carrying a newline and a forged line, a
/// `CallSid` carrying one, and a stream `start` whose `callSid` carries one. The webhook with the
/// bad `CallSid` gets 400 and the `start` is closed with 1008; nothing the peer sent starts a
/// line of its own, and the `From` is logged with its newline escaped.
#[cfg(unix)]
#[test]
// A test of the whole process: it polls the log file with a wall-clock bound.
#[allow(clippy::disallowed_methods)]
fn network_input_cannot_forge_a_log_line() {
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::{self, Message, protocol::frame::coding::CloseCode};

    const FORGED: &str = "1999-01-01T00:00:00.000000Z  INFO handset_shell::routes: forged";
    let dir = std::env::temp_dir().join(format!("handset-cli-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("server.log");
    let mut child = handset()
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "text"])
        .env("DATA_DIR", dir.join("data"))
        .env("LOG_PII", "full")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("handset listening")) {
            let at = line.find("listen=").expect("listen field") + "listen=".len();
            break line[at..].split_whitespace().next().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the server never logged that it listens"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let post = |form: &str| {
        let mut stream = TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /webhook/incoming_call HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    let call = "CA0123456789abcdef0123456789abcdef";
    let account = "AC0123456789abcdef0123456789abcdef";
    let forged = FORGED.replace(' ', "+").replace(':', "%3A");
    let reply = post(&format!(
        "CallSid={call}&AccountSid={account}&From=%2B15550001111%0A{forged}&To=%2B15550002222"
    ));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let twiml = reply.split_once("\r\n\r\n").unwrap().1;
    let target = handset_sim::parse_twiml(twiml).expect("TwiML with a stream");
    let parameters: serde_json::Map<String, serde_json::Value> = target
        .parameters
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    let reply = post(&format!("CallSid={call}%0A{forged}&AccountSid={account}"));
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("invalid CallSid"), "{reply}");

    // The call's stream: its `WS start` line logs the caller's number.
    let stream_sid = "MZ0123456789abcdef0123456789abcdef";
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws/twilio-media")).unwrap();
    let start = serde_json::json!({"event": "start", "streamSid": stream_sid, "start": {
        "streamSid": stream_sid, "callSid": call, "accountSid": account, "tracks": ["inbound"],
        "customParameters": parameters}});
    ws.send(Message::text(start.to_string())).unwrap();
    let stop = serde_json::json!({"event": "stop", "streamSid": stream_sid});
    ws.send(Message::text(stop.to_string())).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
    drop(ws);

    // A `start` whose callSid forges a line: refused before any token is looked at.
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws/twilio-media")).unwrap();
    let start = serde_json::json!({"event": "start", "start": {
        "streamSid": stream_sid, "callSid": format!("{call}\n{FORGED}"), "accountSid": account, "tracks": ["inbound"],
        "customParameters": {"streamToken": "x"}}});
    ws.send(Message::text(start.to_string())).unwrap();
    let code = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| f.code),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Policy));
    drop(ws);

    // Both refusals are logged before SIGTERM is sent.
    wait_for_log(&log_path, "WS start refused", deadline);
    stop_with_sigterm(&mut child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !log.lines().any(|l| l.starts_with("1999-")),
        "a forged line:\n{log}"
    );
    assert!(
        log.contains("+15550001111\\n1999-01-01T00:00:00.000000Z"),
        "the caller's From is logged whole, its newline escaped:\n{log}"
    );
}
