//! Unit tests of [`Config::from_vars`]: defaults, every variable's parsing and bounds, the
//! checks between variables, the open-files arithmetic behind `MAX_CONNECTIONS`, and that
//! secrets never print.

use super::*;

fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(pairs.iter().copied())
}

#[test]
fn the_echo_check_is_on_unless_switched_off() {
    assert!(from(&[]).unwrap().echo_check);
    assert!(!from(&[("ECHO_CHECK", "off")]).unwrap().echo_check);
    assert!(from(&[]).unwrap().onset_check);
    assert!(!from(&[("ONSET_CHECK", "off")]).unwrap().onset_check);
    assert_eq!(from(&[]).unwrap().onset_pause, Duration::from_millis(500));
    assert_eq!(
        from(&[("ONSET_PAUSE_MS", "0")]).unwrap().onset_pause,
        Duration::ZERO
    );
    assert_eq!(
        from(&[("ONSET_PAUSE_MS", "2001")]).unwrap_err().to_string(),
        "ONSET_PAUSE_MS must be an integer from 0 to 2000: got \"2001\""
    );
    assert_eq!(
        from(&[("ECHO_CHECK", "no")]).unwrap_err().to_string(),
        "ECHO_CHECK must be on or off: got \"no\""
    );
}

#[test]
fn empty_environment_gives_documented_defaults() {
    let c = from(&[]).unwrap();
    assert_eq!(c.listen, "0.0.0.0:3000".parse().unwrap());
    assert!(c.auth_token.is_none());
    assert!(!c.signature_checks());
    assert!(c.public_url.is_none());
    assert_eq!(c.greeting.language, "en-US");
    assert!(c.greeting.text.is_empty());
    assert_eq!(c.record_max_length, Duration::from_secs(120));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.stream_token_ttl, Duration::from_secs(600));
}

#[test]
fn log_color_is_parsed_and_auto_colours_only_a_terminal() {
    assert_eq!(from(&[]).unwrap().log_color, LogColor::Auto);
    for (value, color) in [
        ("auto", LogColor::Auto),
        ("Always", LogColor::Always),
        ("NEVER", LogColor::Never),
    ] {
        assert_eq!(from(&[("LOG_COLOR", value)]).unwrap().log_color, color);
    }
    assert!(LogColor::Auto.is_on(true));
    assert!(!LogColor::Auto.is_on(false));
    assert!(LogColor::Always.is_on(false));
    assert!(!LogColor::Never.is_on(true));
    assert_eq!(
        from(&[("LOG_COLOR", "yes")]).unwrap_err().to_string(),
        "LOG_COLOR must be auto, always or never: got \"yes\""
    );
}

#[test]
fn full_environment_is_parsed() {
    let c = from(&[
        ("PORT", "8080"),
        ("BIND", "127.0.0.1"),
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("PUBLIC_URL", "https://voice.example.com/"),
        ("DEPLOY_ID", "blue-7"),
        ("GREETING_TEXT", "Hello"),
        ("GREETING_VOICE", "Polly.Joanna"),
        ("GREETING_LANGUAGE", "en_gb"),
        ("RECORD_MAX_LENGTH", "60"),
        ("LOG_FORMAT", "JSON"),
        ("DATA_DIR", "/var/lib/handset"),
        ("STREAM_TOKEN_TTL", "30"),
    ])
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.auth_token.as_ref().unwrap().expose(), "tok");
    let url = c.public_url.unwrap();
    assert_eq!(url.http_url("/a"), "https://voice.example.com/a");
    assert_eq!(url.ws_url("/ws"), "wss://voice.example.com/ws");
    assert_eq!(c.deploy_id.as_deref(), Some("blue-7"));
    assert_eq!(c.greeting.language, "en-GB");
    assert_eq!(c.greeting.voice.as_deref(), Some("Polly.Joanna"));
    assert_eq!(c.record_max_length, Duration::from_secs(60));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/handset"));
    assert_eq!(c.stream_token_ttl, Duration::from_secs(30));
}

#[test]
fn openai_key_selects_the_realtime_adapter_and_is_never_shown() {
    let c = from(&[("OPENAI_API_KEY", "sk-abc"), ("OPENAI_VOICE", "verse")]).unwrap();
    let agent = c.agent.unwrap();
    assert_eq!(agent.url, DEFAULT_OPENAI_REALTIME_URL);
    let (name, value) = agent.auth.clone().unwrap();
    assert_eq!(
        (name.as_str(), value.expose()),
        ("authorization", "Bearer sk-abc")
    );
    assert!(!format!("{agent:?}").contains("sk-abc"));
    let openai = agent.openai.unwrap();
    assert_eq!(openai.voice, "verse");
    assert_eq!(
        openai.transcribe_model.as_deref(),
        Some("gpt-4o-mini-transcribe")
    );
    let local = from(&[
        ("OPENAI_API_KEY", "k"),
        ("OPENAI_REALTIME_URL", "ws://127.0.0.1:9/v1/realtime"),
        ("OPENAI_TRANSCRIBE_MODEL", "off"),
    ])
    .unwrap()
    .agent
    .unwrap();
    assert_eq!(local.url, "ws://127.0.0.1:9/v1/realtime");
    let local = local.openai.unwrap();
    assert_eq!(local.transcribe_model, None);
    assert_eq!(local.greeting.as_deref(), Some(DEFAULT_OPENAI_GREETING));
    let quiet = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_GREETING", "OFF")]).unwrap();
    assert_eq!(quiet.agent.unwrap().openai.unwrap().greeting, None);
    let custom = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_GREETING", "Say hi.")]).unwrap();
    assert_eq!(
        custom.agent.unwrap().openai.unwrap().greeting.as_deref(),
        Some("Say hi.")
    );
    assert!(local.dtmf, "keys are forwarded by default");
    let no_keys = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_DTMF", "off")]).unwrap();
    assert!(!no_keys.agent.unwrap().openai.unwrap().dtmf);
    let err = from(&[("OPENAI_API_KEY", "k"), ("OPENAI_DTMF", "maybe")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "OPENAI_DTMF must be on or off: got \"maybe\""
    );
    assert!(from(&[("OPENAI_API_KEY", "k"), ("AGENT_URL", "ws://h")]).is_err());
    assert!(from(&[("OPENAI_API_KEY", "k"), ("AGENT_TOKEN", "t")]).is_err());
    assert!(
        from(&[
            ("OPENAI_API_KEY", "k"),
            ("OPENAI_REALTIME_URL", "https://x")
        ])
        .is_err()
    );
    assert!(from(&[("OPENAI_API_KEY", "a\u{1}b")]).is_err());
}

#[test]
fn agent_variables_are_validated_and_secrets_never_shown() {
    assert!(from(&[]).unwrap().agent.is_none());
    let c = from(&[
        ("AGENT_URL", "wss://agent.example.com/voice?x=1"),
        ("AGENT_AUTH_HEADER", "X-Api-Key: s3cret"),
        ("AGENT_CONNECT_TIMEOUT_MS", "250"),
        ("AGENT_REPLY_TIMEOUT_MS", "4000"),
        ("AGENT_FALLBACK", "Tone"),
    ])
    .unwrap();
    let agent = c.agent.unwrap();
    assert_eq!(agent.url, "wss://agent.example.com/voice?x=1");
    let (name, value) = agent.auth.clone().unwrap();
    assert_eq!((name.as_str(), value.expose()), ("x-api-key", "s3cret"));
    assert!(!format!("{agent:?}").contains("s3cret"));
    assert_eq!(agent.connect_timeout, Duration::from_millis(250));
    assert_eq!(agent.reply_timeout, Some(Duration::from_secs(4)));
    assert_eq!(agent.fallback, AgentFallback::Tone);

    let token = from(&[("AGENT_URL", "ws://127.0.0.1:9"), ("AGENT_TOKEN", "t")]).unwrap();
    let (name, value) = token.agent.unwrap().auth.unwrap();
    assert_eq!(
        (name.as_str(), value.expose()),
        ("authorization", "Bearer t")
    );
    let off = from(&[("AGENT_URL", "ws://h"), ("AGENT_REPLY_TIMEOUT_MS", "0")]).unwrap();
    assert_eq!(off.agent.unwrap().reply_timeout, None);

    for bad in ["http://h", "ws://", "ws://u:p@h/", "wss://h/#f", "h:80"] {
        assert!(
            matches!(
                from(&[("AGENT_URL", bad)]),
                Err(ConfigError::WebSocketUrl { .. })
            ),
            "{bad}"
        );
    }
    let err = from(&[("AGENT_URL", "ws://h"), ("AGENT_AUTH_HEADER", "novalue")]).unwrap_err();
    assert!(!err.to_string().contains("novalue"), "{err}");
    assert!(matches!(
        from(&[
            ("AGENT_URL", "ws://h"),
            ("AGENT_AUTH_HEADER", "A: b"),
            ("AGENT_TOKEN", "c")
        ]),
        Err(ConfigError::Conflict { .. })
    ));
    assert_eq!(
        from(&[("AGENT_TOKEN", "c")]).unwrap_err(),
        ConfigError::AgentUrlMissing {
            name: "AGENT_TOKEN"
        }
    );
    assert!(from(&[("AGENT_URL", "ws://h"), ("AGENT_CONNECT_TIMEOUT_MS", "5")]).is_err());
    assert!(from(&[("AGENT_URL", "ws://h"), ("AGENT_FALLBACK", "music")]).is_err());
}

#[test]
fn later_pairs_override_earlier_ones() {
    let c = from(&[("PORT", "1"), ("PORT", "2")]).unwrap();
    assert_eq!(c.listen.port(), 2);
}

#[test]
fn public_url_with_query_or_path_is_rejected_with_the_value() {
    for bad in [
        "voice.example.com",
        "ftp://voice.example.com",
        "https://voice.example.com/?x=1",
        "https://voice.example.com/base",
        "https://user:pw@voice.example.com",
        "https://",
    ] {
        let err = from(&[("PUBLIC_URL", bad)]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("PUBLIC_URL must be an absolute http(s) URL"),
            "{msg}"
        );
        assert!(msg.contains(bad), "{msg}");
    }
}

#[test]
fn bad_numbers_name_the_variable_and_range() {
    let err = from(&[("PORT", "70000")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PORT must be an integer from 0 to 65535: got \"70000\""
    );
    assert!(from(&[("RECORD_MAX_LENGTH", "1")]).is_err());
    assert!(from(&[("RECORD_MAX_LENGTH", "abc")]).is_err());
    assert!(from(&[("STREAM_TOKEN_TTL", "5")]).is_err());
    assert_eq!(
        from(&[("ENGINE_REALTIME_PRIORITY", "100")])
            .unwrap_err()
            .to_string(),
        "ENGINE_REALTIME_PRIORITY must be an integer from 0 to 99: got \"100\""
    );
}

#[test]
fn the_free_space_floor_reaches_the_sqlite_store_in_bytes() {
    assert_eq!(from(&[]).unwrap().store_options().min_free_bytes, 64 << 20);
    let off = from(&[("STORE_MIN_FREE_MB", "0")]).unwrap();
    assert_eq!(off.store_options().min_free_bytes, 0);
    let one = from(&[("STORE_MIN_FREE_MB", "1")]).unwrap();
    assert_eq!(one.store_options().min_free_bytes, 1 << 20);
    assert_eq!(
        from(&[("STORE_MIN_FREE_MB", "-1")])
            .unwrap_err()
            .to_string(),
        "STORE_MIN_FREE_MB must be an integer from 0 to 1048576: got \"-1\""
    );
}

#[test]
fn engine_realtime_priority_is_off_by_default_and_at_zero() {
    assert_eq!(from(&[]).unwrap().engine_realtime_priority, None);
    let zero = from(&[("ENGINE_REALTIME_PRIORITY", "0")]).unwrap();
    assert_eq!(zero.engine_realtime_priority, None);
    let on = from(&[("ENGINE_REALTIME_PRIORITY", "20")]).unwrap();
    assert_eq!(on.engine_realtime_priority, Some(20));
}

#[test]
fn engine_cpu_latency_is_off_unless_set() {
    assert_eq!(from(&[]).unwrap().engine_cpu_latency, None);
    let zero = from(&[("ENGINE_CPU_LATENCY_US", "0")]).unwrap();
    assert_eq!(zero.engine_cpu_latency, Some(Duration::ZERO));
    assert!(from(&[("ENGINE_CPU_LATENCY_US", "100001")]).is_err());
}

#[test]
fn health_port_is_a_port_other_than_port() {
    assert_eq!(from(&[]).unwrap().health_port, None);
    let c = from(&[("PORT", "3000"), ("HEALTH_PORT", "9090")]).unwrap();
    assert_eq!(c.health_port, Some(9090));
    assert!(
        from(&[("PORT", "3000"), ("HEALTH_PORT", "3000")])
            .unwrap_err()
            .to_string()
            .contains("HEALTH_PORT")
    );
    assert!(from(&[("HEALTH_PORT", "0")]).is_err());
    assert!(from(&[("HEALTH_PORT", "65536")]).is_err());
}

#[test]
fn empty_auth_token_is_an_error_not_a_silent_disable() {
    assert_eq!(
        from(&[("TWILIO_AUTH_TOKEN", "  ")]).unwrap_err(),
        ConfigError::EmptyAuthToken
    );
}

#[test]
fn bad_language_bind_and_log_format_are_rejected() {
    assert!(matches!(
        from(&[("GREETING_LANGUAGE", "english")]),
        Err(ConfigError::Language { .. })
    ));
    assert!(matches!(
        from(&[("BIND", "localhost")]),
        Err(ConfigError::BindAddress { .. })
    ));
    assert!(matches!(
        from(&[("LOG_FORMAT", "xml")]),
        Err(ConfigError::LogFormat { .. })
    ));
}

#[test]
fn stream_limits_default_to_the_documented_values() {
    let c = from(&[]).unwrap();
    assert_eq!(c.ws_max_message_bytes, 64 * 1024);
    assert_eq!(c.ws_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.ws_write_timeout, Duration::from_secs(5));
    assert_eq!(c.ws_start_timeout, Duration::from_secs(10));
    assert!(c.metrics_token.is_none());
}

#[test]
fn stream_limits_are_read_at_their_bounds() {
    let low = from(&[
        ("WS_MAX_MESSAGE_BYTES", "1024"),
        ("WS_IDLE_TIMEOUT", "1"),
        ("WS_WRITE_TIMEOUT", "1"),
        ("WS_START_TIMEOUT", "1"),
    ])
    .unwrap();
    assert_eq!(low.ws_max_message_bytes, 1024);
    assert_eq!(low.ws_idle_timeout, Duration::from_secs(1));
    assert_eq!(low.ws_write_timeout, Duration::from_secs(1));
    assert_eq!(low.ws_start_timeout, Duration::from_secs(1));
    let high = from(&[
        ("WS_MAX_MESSAGE_BYTES", "16777216"),
        ("WS_IDLE_TIMEOUT", "3600"),
        ("WS_WRITE_TIMEOUT", "600"),
        ("WS_START_TIMEOUT", " 600 "),
    ])
    .unwrap();
    assert_eq!(high.ws_max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(high.ws_idle_timeout, Duration::from_secs(3600));
    assert_eq!(high.ws_write_timeout, Duration::from_secs(600));
    assert_eq!(high.ws_start_timeout, Duration::from_secs(600));
}

#[test]
fn stream_limits_outside_their_range_name_the_variable_and_range() {
    let cases = [
        ("WS_MAX_MESSAGE_BYTES", "1023", "1024 to 16777216"),
        ("WS_MAX_MESSAGE_BYTES", "16777217", "1024 to 16777216"),
        ("WS_MAX_MESSAGE_BYTES", "64k", "1024 to 16777216"),
        ("WS_IDLE_TIMEOUT", "0", "1 to 3600"),
        ("WS_IDLE_TIMEOUT", "3601", "1 to 3600"),
        ("WS_WRITE_TIMEOUT", "0", "1 to 600"),
        ("WS_WRITE_TIMEOUT", "601", "1 to 600"),
        ("WS_START_TIMEOUT", "-1", "1 to 600"),
        ("WS_START_TIMEOUT", "1.5", "1 to 600"),
    ];
    for (name, value, range) in cases {
        let err = from(&[(name, value)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{name} must be an integer from {range}: got {value:?}")
        );
    }
}

#[test]
fn metrics_token_is_a_secret_and_empty_is_refused() {
    let c = from(&[("METRICS_TOKEN", " scrape-me ")]).unwrap();
    assert_eq!(c.metrics_token.as_ref().unwrap().expose(), "scrape-me");
    assert!(!format!("{c:?}").contains("scrape-me"));
    assert_eq!(
        from(&[("METRICS_TOKEN", " ")]).unwrap_err(),
        ConfigError::EmptyMetricsToken
    );
}

#[test]
fn twilio_rest_variables_are_validated_and_secrets_never_shown() {
    let c = from(&[]).unwrap();
    assert_eq!(c.twilio.api_url.to_string(), DEFAULT_TWILIO_API_URL);
    assert!(!c.twilio.is_usable());
    let account = "AC0123456789abcdef0123456789abcdef";
    let key = "SK0123456789abcdef0123456789abcdef";
    let c = from(&[
        ("TWILIO_ACCOUNT_SID", account),
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("TWILIO_API_URL", "http://127.0.0.1:9/"),
        ("TWILIO_FROM", "+15550001111"),
    ])
    .unwrap();
    assert_eq!(c.twilio.api_url.http_url("/x"), "http://127.0.0.1:9/x");
    let (user, password) = c.twilio.credentials().unwrap();
    assert_eq!((user.as_str(), password.expose()), (account, "tok"));
    assert_eq!(c.twilio.from.as_deref(), Some("+15550001111"));
    let keyed = from(&[
        ("TWILIO_ACCOUNT_SID", account),
        ("TWILIO_API_KEY_SID", key),
        ("TWILIO_API_KEY_SECRET", "key-secret"),
    ])
    .unwrap();
    let (user, password) = keyed.twilio.credentials().unwrap();
    assert_eq!((user.as_str(), password.expose()), (key, "key-secret"));
    assert!(!format!("{keyed:?}").contains("key-secret"));
    for host in ["http://localhost:8080", "http://[::1]:1"] {
        assert!(from(&[("TWILIO_API_URL", host)]).is_ok(), "{host}");
    }
    assert_eq!(
        from(&[("TWILIO_API_URL", "http://api.example.com")])
            .unwrap_err()
            .to_string(),
        "TWILIO_API_URL must be https unless its host is 127.0.0.1, localhost or [::1]: got \"http://api.example.com\""
    );
    assert!(from(&[("TWILIO_API_URL", "https://api.example.com/path")]).is_err());
    assert_eq!(
        from(&[("TWILIO_ACCOUNT_SID", "AC123")])
            .unwrap_err()
            .to_string(),
        "TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits: got \"AC123\""
    );
    assert_eq!(
        from(&[("TWILIO_ACCOUNT_SID", account), ("TWILIO_API_KEY_SID", key)]).unwrap_err(),
        ConfigError::Requires {
            name: "TWILIO_API_KEY_SID",
            needs: "TWILIO_API_KEY_SECRET"
        }
    );
    assert!(from(&[("TWILIO_API_KEY_SID", key), ("TWILIO_API_KEY_SECRET", "s")]).is_err());
    assert!(from(&[("TWILIO_FROM", "5550001111")]).is_err());
}

#[test]
fn control_token_needs_a_public_url_and_twilio_credentials() {
    let account = "AC0123456789abcdef0123456789abcdef";
    let c = from(&[
        ("CONTROL_TOKEN", " ctl "),
        ("PUBLIC_URL", "https://voice.example.com"),
        ("TWILIO_ACCOUNT_SID", account),
        ("TWILIO_AUTH_TOKEN", "tok"),
    ])
    .unwrap();
    assert_eq!(c.control_token.as_ref().unwrap().expose(), "ctl");
    assert!(!format!("{c:?}").contains("ctl\""));
    assert_eq!(
        from(&[("CONTROL_TOKEN", "ctl"), ("TWILIO_ACCOUNT_SID", account)]).unwrap_err(),
        ConfigError::Requires {
            name: "CONTROL_TOKEN",
            needs: "PUBLIC_URL"
        }
    );
    assert!(matches!(
        from(&[
            ("CONTROL_TOKEN", "ctl"),
            ("PUBLIC_URL", "https://voice.example.com")
        ]),
        Err(ConfigError::Requires {
            name: "CONTROL_TOKEN",
            ..
        })
    ));
    assert_eq!(
        from(&[("CONTROL_TOKEN", "")]).unwrap_err(),
        ConfigError::EmptyControlToken
    );
}

fn limited(pairs: &[(&str, &str)], files: Option<u64>) -> Result<Config, ConfigError> {
    Config::from_vars_limited(pairs.iter().copied(), &Overrides::default(), files)
}

#[test]
fn max_connections_default_is_what_the_open_files_limit_leaves() {
    // 1024 − 64 reserved − 3 × 8 store connections.
    assert_eq!(limited(&[], Some(1024)).unwrap().max_connections, 936);
    let store = [("DATABASE_MAX_CONNECTIONS", "20")];
    assert_eq!(limited(&store, Some(1024)).unwrap().max_connections, 900);
    // A remote agent: one upstream socket per call, so half when calls are not limited,
    // and MAX_CALLS fewer when they are.
    let agent = [("AGENT_URL", "ws://127.0.0.1:9")];
    assert_eq!(limited(&agent, Some(1024)).unwrap().max_connections, 468);
    let agent_calls = [("AGENT_URL", "ws://127.0.0.1:9"), ("MAX_CALLS", "100")];
    assert_eq!(
        limited(&agent_calls, Some(1024)).unwrap().max_connections,
        836
    );
    // However many files: at most the ceiling, or what MAX_CALLS needs when that is more.
    for files in [None, Some(1_048_576)] {
        assert_eq!(
            limited(&[], files).unwrap().max_connections,
            MAX_CONNECTIONS_CEILING
        );
    }
    assert_eq!(
        limited(&[("MAX_CALLS", "20000")], None)
            .unwrap()
            .max_connections,
        20_032
    );
}

#[test]
fn max_connections_is_checked_against_max_calls_and_the_open_files_limit() {
    let c = limited(&[("MAX_CONNECTIONS", " 8 ")], Some(1024)).unwrap();
    assert_eq!(c.max_connections, 8);
    let c = limited(
        &[("MAX_CALLS", "100"), ("MAX_CONNECTIONS", "132")],
        Some(1024),
    );
    assert_eq!(c.unwrap().max_connections, 132);
    for bad in ["0", "1000001", "many", "-1"] {
        assert_eq!(
            limited(&[("MAX_CONNECTIONS", bad)], Some(1024))
                .unwrap_err()
                .to_string(),
            format!("MAX_CONNECTIONS must be an integer from 1 to 1000000: got {bad:?}")
        );
    }
    assert_eq!(
        limited(
            &[("MAX_CALLS", "100"), ("MAX_CONNECTIONS", "100")],
            Some(1024)
        )
        .unwrap_err()
        .to_string(),
        "MAX_CONNECTIONS (100) must be at least MAX_CALLS + 32 (132): every call holds a connection for its media stream, and webhooks, health checks and scrapes need more"
    );
    assert_eq!(
        limited(&[("MAX_CONNECTIONS", "5000")], Some(1024))
            .unwrap_err()
            .to_string(),
        "MAX_CONNECTIONS (5000) needs about 5088 open files (connections, agent sockets, the store, logs) but the open-files limit (RLIMIT_NOFILE) is 1024: raise it (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit) or lower MAX_CONNECTIONS"
    );
    // With a remote agent each call may hold an upstream socket too.
    let agent = [("AGENT_URL", "ws://h"), ("MAX_CONNECTIONS", "500")];
    assert!(matches!(
        limited(&agent, Some(1024)),
        Err(ConfigError::ConnectionsOverFileLimit { needed: 1088, .. })
    ));
    assert_eq!(
        limited(&[("MAX_CONNECTIONS", "5000")], None)
            .unwrap()
            .max_connections,
        5000
    );
}

#[test]
fn an_open_files_limit_too_low_for_max_calls_is_an_error() {
    assert_eq!(
        limited(&[("MAX_CALLS", "1000")], Some(1024))
            .unwrap_err()
            .to_string(),
        "the open-files limit (RLIMIT_NOFILE) is 1024, which leaves 936 connections: at least 1032 are needed (MAX_CALLS + 32); raise it (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit) or lower MAX_CALLS"
    );
    assert!(matches!(
        limited(&[], Some(100)),
        Err(ConfigError::FileLimitTooLow {
            limit: 100,
            available: 12,
            needed: 32
        })
    ));
}

#[test]
fn secret_never_prints_its_value() {
    let c = from(&[("TWILIO_AUTH_TOKEN", "hunter2")]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(c.auth_token.unwrap().to_string(), "[redacted]");
}

#[test]
fn trace_sample_is_a_share_from_zero_to_one() {
    assert_eq!(from(&[]).unwrap().trace_sample, 0.0);
    assert_eq!(
        from(&[("TRACE_SAMPLE", "0.05")]).unwrap().trace_sample,
        0.05
    );
    assert_eq!(from(&[("TRACE_SAMPLE", "1")]).unwrap().trace_sample, 1.0);
    for bad in ["2", "-0.1", "NaN", "half"] {
        assert_eq!(
            from(&[("TRACE_SAMPLE", bad)]).unwrap_err().to_string(),
            format!("TRACE_SAMPLE must be a number from 0 to 1, such as 0.05: got {bad:?}")
        );
    }
}

#[test]
fn a_typed_override_takes_the_place_of_its_variable() {
    let overrides = Overrides {
        port: Some(8080),
        bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        log_format: Some(LogFormat::Json),
        data_dir: Some(PathBuf::from("/var/lib/handset")),
    };
    // The variables an override replaces are not read, so even bad values are no error.
    let vars = [
        ("PORT", "not a port"),
        ("BIND", "nowhere"),
        ("LOG_FORMAT", "xml"),
        ("DATA_DIR", "/elsewhere"),
    ];
    let c = Config::from_vars_with(vars, &overrides).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/handset"));
    // Without overrides the same variables are read, and refused.
    assert_eq!(
        Config::from_vars_with(vars, &Overrides::default())
            .unwrap_err()
            .to_string(),
        Config::from_vars(vars).unwrap_err().to_string()
    );
    // The checks between variables see the overridden value.
    let err = Config::from_vars_with([("HEALTH_PORT", "8080")], &overrides).unwrap_err();
    assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
    // A path that is not UTF-8 is kept as it is.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let raw = PathBuf::from(std::ffi::OsStr::from_bytes(b"/srv/h\xffandset"));
        let o = Overrides {
            data_dir: Some(raw.clone()),
            ..Overrides::default()
        };
        assert_eq!(
            Config::from_vars_with([("A", "b")], &o).unwrap().data_dir,
            raw
        );
    }
}

#[test]
fn log_pii_is_masked_unless_full_in_any_case_and_refuses_other_values() {
    assert!(!from(&[]).unwrap().log_pii_full);
    assert!(!from(&[("LOG_PII", "Masked")]).unwrap().log_pii_full);
    assert!(from(&[("LOG_PII", "full")]).unwrap().log_pii_full);
    assert!(from(&[("LOG_PII", "FULL")]).unwrap().log_pii_full);
    assert_eq!(
        from(&[("LOG_PII", "yes")]).unwrap_err().to_string(),
        "LOG_PII must be masked or full: got \"yes\""
    );
}
