//! A small client for Twilio's REST API: create a call, update a call, download a recording.
//!
//! Built on reqwest (hyper underneath) with rustls, the ring provider and the Mozilla roots; no
//! proxy, no redirects (a 3xx is an error, so credentials never follow a `Location` to another
//! host) and bounded timeouts. Every URL is built here from the configured origin
//! (`TWILIO_API_URL`, default `https://api.twilio.com`) and validated identifiers, never taken
//! from a request or a callback, so the credentials (`TWILIO_ACCOUNT_SID` with
//! `TWILIO_AUTH_TOKEN`, or an API key pair, sent as HTTP Basic auth) only ever go to that host.
//! Tests point `TWILIO_API_URL` at a fake Twilio on loopback (plain http is accepted only for
//! loopback hosts, see [`crate::config`]).
//!
//! Outbound calls ([`Outbound`]) are shared by `POST /calls` and `handset call`: the new call's
//! TwiML is Handset's own voice webhook, with the caller's extra parameters on its query string
//! (`p.<name>=<value>`), which the webhook turns into `<Parameter>`s the agent sees in
//! `customParameters`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::config::{PublicUrl, Secret, TwilioRestConfig};
use crate::ids::{is_address, is_sid};

/// The API version prefix of every path.
pub const API_PATH: &str = "/2010-04-01";
/// Prefix of an extra call parameter on the voice webhook's query string.
pub const PARAM_PREFIX: &str = "p.";
/// Most extra parameters on one outbound call.
pub const MAX_PARAMS: usize = 16;
/// Longest extra parameter value, in bytes.
pub const MAX_PARAM_VALUE: usize = 256;
/// Parameter names Handset writes itself; an extra parameter may not take them.
pub const RESERVED_PARAMS: [&str; 8] = [
    "accountSid",
    "callSid",
    "direction",
    "from",
    crate::tokens::TOKEN_PARAMETER,
    "to",
    "trace",
    "hop",
];
/// Longest wait to connect to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest API call (create, update); downloads have their own bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest error body read from Twilio (for its message).
const MAX_ERROR_BODY: usize = 8 * 1024;

/// Why a REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
    /// The account SID in a request is not the configured `TWILIO_ACCOUNT_SID`.
    #[error("account {given} is not the configured TWILIO_ACCOUNT_SID")]
    Account {
        /// The SID given.
        given: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the twilio http client: {0}")]
    Client(String),
    /// Connecting, TLS, a timeout or the HTTP exchange failed.
    #[error("twilio request failed: {0}")]
    Http(String),
    /// An identifier that is not the expected prefix and 32 hex digits.
    #[error("{name} must be {prefix} followed by 32 hex digits: got {value:?}")]
    Sid {
        /// What the identifier is.
        name: &'static str,
        /// Its two-letter prefix.
        prefix: &'static str,
        /// The value given (cut to 64 characters).
        value: String,
    },
    /// A RecordingSid that is not `RE` and letters or digits.
    #[error("RecordingSid must be RE followed by at most 62 letters or digits: got {value:?}")]
    RecordingSid {
        /// The value given (cut to 64 characters).
        value: String,
    },
    /// What is needed for this request is not configured.
    #[error("{0} is not set")]
    NotConfigured(&'static str),
    /// Twilio answered with something that is not the expected JSON.
    #[error("unexpected twilio response: {0}")]
    Response(String),
    /// Twilio answered with a non-success status (its message, if any).
    #[error("twilio answered status {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Twilio's `message`, or empty.
        message: String,
    },
    /// The body is larger than allowed.
    #[error("twilio response is over {limit} bytes")]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
}

impl TwilioError {
    /// Whether retrying later could help (network errors, 5xx, 429, 404 before Twilio has the
    /// file).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Http(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429 || *status == 404,
            _ => false,
        }
    }
}

/// A call to create: Twilio dials `to` from `from` and fetches its TwiML from `url`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct NewCall {
    /// `To`: E.164 number, `sip:` or `client:` address.
    pub to: String,
    /// `From`: the caller ID.
    pub from: String,
    /// `Url`: the voice webhook (fetched with POST).
    pub url: String,
    /// `StatusCallback` (POSTed on initiated, ringing, answered, completed), if any.
    pub status_callback: Option<String>,
}

/// What to do with a live call.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum UpdateCall {
    /// Hang it up (`Status=completed`).
    Completed,
    /// Fetch new TwiML from this URL (`Url=…&Method=POST`).
    Redirect(String),
}

/// The Twilio REST client. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct TwilioClient {
    http: reqwest::Client,
    api_url: PublicUrl,
    account_sid: Option<String>,
    /// Basic-auth user and password from the configuration (API key, or account SID and
    /// auth token); `None` when they are not both configured.
    auth: Option<(String, Secret)>,
    /// `TWILIO_AUTH_TOKEN`: without `TWILIO_ACCOUNT_SID`, a download authenticates as the
    /// account in its path (the account of the signed callback), as earlier versions did.
    auth_token: Option<Secret>,
}

#[derive(Deserialize)]
struct CallResource {
    sid: String,
}

#[derive(Deserialize)]
struct ErrorResource {
    message: Option<String>,
}

impl TwilioClient {
    /// A client for the configured API origin and credentials (the API key pair if set, else
    /// the account SID and auth token).
    pub fn new(config: &TwilioRestConfig) -> Result<Self, TwilioError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TwilioError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("handset/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TwilioError::Client(e.to_string()))?;
        Ok(Self {
            http,
            api_url: config.api_url.clone(),
            account_sid: config.account_sid.clone(),
            auth: config.credentials(),
            auth_token: config.auth_token.clone(),
        })
    }

    /// The configured `TWILIO_ACCOUNT_SID`.
    pub fn account_sid(&self) -> Option<&str> {
        self.account_sid.as_deref()
    }

    /// The API origin every request goes to.
    pub fn api_url(&self) -> &PublicUrl {
        &self.api_url
    }

    /// `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`: starts the call; returns its
    /// CallSid.
    pub async fn create_call(&self, call: &NewCall) -> Result<String, TwilioError> {
        let account = self
            .account_sid
            .as_deref()
            .ok_or(TwilioError::NotConfigured("TWILIO_ACCOUNT_SID"))?;
        let url = self.url(&format!("/Accounts/{account}/Calls.json"));
        let body = self.post(&url, create_form(call)).await?;
        let resource: CallResource = serde_json::from_slice(&body)
            .map_err(|e| TwilioError::Response(format!("call resource: {e}")))?;
        check_sid("CallSid", "CA", &resource.sid)?;
        Ok(resource.sid)
    }

    /// `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`: hangs the call up or
    /// redirects it to new TwiML.
    pub async fn update_call(
        &self,
        call_sid: &str,
        update: &UpdateCall,
    ) -> Result<(), TwilioError> {
        let account = self
            .account_sid
            .as_deref()
            .ok_or(TwilioError::NotConfigured("TWILIO_ACCOUNT_SID"))?;
        check_sid("CallSid", "CA", call_sid)?;
        let url = self.url(&format!("/Accounts/{account}/Calls/{call_sid}.json"));
        self.post(&url, update_form(update)).await.map(drop)
    }

    /// `GET /2010-04-01/Accounts/{AccountSid}/Recordings/{RecordingSid}.wav`: the recording,
    /// refused once it is over `max_bytes`.
    pub async fn download_recording(
        &self,
        account_sid: &str,
        recording_sid: &str,
        max_bytes: usize,
    ) -> Result<Bytes, TwilioError> {
        self.check_account(account_sid)?;
        // Only letters and digits reach the path (the voice webhook also insists on 32 hex).
        if !recording_sid.starts_with("RE")
            || recording_sid.len() > 64
            || !recording_sid.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(TwilioError::RecordingSid {
                value: recording_sid.chars().take(64).collect(),
            });
        }
        let url = self.url(&format!(
            "/Accounts/{account_sid}/Recordings/{recording_sid}.wav"
        ));
        let response = self
            .authorized(self.http.get(url), account_sid)?
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(response).await);
        }
        read_capped(response, max_bytes).await
    }

    /// Whether `url` (a callback's `RecordingUrl`) is exactly this API's address of that
    /// recording: same scheme, host and port, path
    /// `/2010-04-01/Accounts/{account_sid}/Recordings/{recording_sid}`, no credentials, query
    /// or fragment.
    pub fn is_recording_url(&self, url: &str, account_sid: &str, recording_sid: &str) -> bool {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        let Ok(api) = reqwest::Url::parse(&self.api_url.to_string()) else {
            return false;
        };
        let path = format!("{API_PATH}/Accounts/{account_sid}/Recordings/{recording_sid}");
        parsed.scheme() == api.scheme()
            && parsed.host() == api.host()
            && parsed.port_or_known_default() == api.port_or_known_default()
            && parsed.username().is_empty()
            && parsed.password().is_none()
            && parsed.query().is_none()
            && parsed.fragment().is_none()
            && parsed.path() == path
    }

    /// A recording download's account must be the configured one (when one is configured):
    /// the credentials belong to it.
    fn check_account(&self, account_sid: &str) -> Result<(), TwilioError> {
        check_sid("AccountSid", "AC", account_sid)?;
        match &self.account_sid {
            Some(mine) if mine != account_sid => Err(TwilioError::Account {
                given: account_sid.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn url(&self, rest: &str) -> String {
        self.api_url.http_url(&format!("{API_PATH}{rest}"))
    }

    /// The request with Basic auth: the API key pair, or the account SID and auth token (the
    /// configured SID, else the one in the path of a download).
    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
        path_account: &str,
    ) -> Result<reqwest::RequestBuilder, TwilioError> {
        let (user, password) = match (&self.auth, &self.auth_token) {
            (Some((user, password)), _) => (user.as_str(), password),
            (None, Some(token)) if !path_account.is_empty() => (path_account, token),
            _ => return Ok(request),
        };
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose()));
        let mut value = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| TwilioError::Client("credentials are not a valid header".to_owned()))?;
        value.set_sensitive(true);
        Ok(request.header(AUTHORIZATION, value))
    }

    async fn post(&self, url: &str, form: String) -> Result<Bytes, TwilioError> {
        let response = self
            .authorized(self.http.post(url), "")?
            .timeout(REQUEST_TIMEOUT)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(http_error)?;
        if !response.status().is_success() {
            return Err(status_error(response).await);
        }
        read_capped(response, MAX_ERROR_BODY * 8).await
    }
}

/// The form of a `Calls.json` create.
fn create_form(call: &NewCall) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", &call.to)
        .append_pair("From", &call.from)
        .append_pair("Url", &call.url)
        .append_pair("Method", "POST");
    if let Some(callback) = &call.status_callback {
        form.append_pair("StatusCallback", callback)
            .append_pair("StatusCallbackMethod", "POST");
        for event in ["initiated", "ringing", "answered", "completed"] {
            form.append_pair("StatusCallbackEvent", event);
        }
    }
    form.finish()
}

/// The form of a call update.
fn update_form(update: &UpdateCall) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match update {
        UpdateCall::Completed => form.append_pair("Status", "completed"),
        UpdateCall::Redirect(to) => form.append_pair("Url", to).append_pair("Method", "POST"),
    };
    form.finish()
}

/// An outbound call as asked for by `POST /calls` or `handset call`, before validation.
#[derive(Clone, Debug, Default, Deserialize, Eq, PartialEq)]
pub struct Outbound {
    /// Who to call.
    pub to: String,
    /// The caller ID; `TWILIO_FROM` when absent.
    #[serde(default)]
    pub from: Option<String>,
    /// Extra parameters for the agent (`customParameters`).
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// Why an outbound call request is refused before Twilio is asked.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum OutboundError {
    /// A `to` or `from` that is no phone number or client address.
    #[error(
        "{name} must be an E.164 number (+ and 8 to 15 digits), a sip: or a client: address: got {value:?}"
    )]
    Address {
        /// `to` or `from`.
        name: &'static str,
        /// The value given (cut to 64 characters).
        value: String,
    },
    /// No `from` and no `TWILIO_FROM`.
    #[error("from is missing and TWILIO_FROM is not set")]
    NoFrom,
    /// An extra parameter with a bad or reserved name, or a value too long.
    #[error(
        "parameter {name:?} is refused: names are 1 to 64 letters, digits, _ or -, not one of Handset's own, values at most {MAX_PARAM_VALUE} bytes"
    )]
    Param {
        /// The name given (cut to 64 characters).
        name: String,
    },
    /// More extra parameters than [`MAX_PARAMS`].
    #[error("{count} parameters given, at most {MAX_PARAMS} allowed")]
    TooManyParams {
        /// How many were given.
        count: usize,
    },
}

impl Outbound {
    /// Validates the request and builds the call: its TwiML is `public_url`'s voice webhook
    /// carrying the extra parameters, its status callbacks go to `/webhook/call_status`.
    pub fn to_new_call(
        &self,
        public_url: &PublicUrl,
        default_from: Option<&str>,
    ) -> Result<NewCall, OutboundError> {
        let cut = |v: &str| v.chars().take(64).collect::<String>();
        let to = self.to.trim();
        if !is_address(to) {
            return Err(OutboundError::Address {
                name: "to",
                value: cut(to),
            });
        }
        let from = match self.from.as_deref().map(str::trim) {
            Some(f) if !f.is_empty() => f,
            _ => default_from.ok_or(OutboundError::NoFrom)?,
        };
        if !is_address(from) {
            return Err(OutboundError::Address {
                name: "from",
                value: cut(from),
            });
        }
        if self.params.len() > MAX_PARAMS {
            return Err(OutboundError::TooManyParams {
                count: self.params.len(),
            });
        }
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.params {
            if !is_param_name(name) || value.len() > MAX_PARAM_VALUE {
                return Err(OutboundError::Param { name: cut(name) });
            }
            query.append_pair(&format!("{PARAM_PREFIX}{name}"), value);
        }
        let query = query.finish();
        let path = if query.is_empty() {
            "/webhook/incoming_call".to_owned()
        } else {
            format!("/webhook/incoming_call?{query}")
        };
        Ok(NewCall {
            to: to.to_owned(),
            from: from.to_owned(),
            url: public_url.http_url(&path),
            status_callback: Some(public_url.http_url("/webhook/call_status")),
        })
    }
}

/// Whether `name` may be an extra call parameter: 1 to 64 ASCII letters, digits, `_` or `-`,
/// and not one of [`RESERVED_PARAMS`].
pub fn is_param_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !RESERVED_PARAMS.contains(&name)
}

fn check_sid(name: &'static str, prefix: &'static str, value: &str) -> Result<(), TwilioError> {
    if is_sid(value, prefix) {
        Ok(())
    } else {
        Err(TwilioError::Sid {
            name,
            prefix,
            value: value.chars().take(64).collect(),
        })
    }
}

/// A transport error with its causes, without the URL (it names only the configured host) and
/// never with credentials (they are in a sensitive header).
fn http_error(e: reqwest::Error) -> TwilioError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "exchange failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    TwilioError::Http(text)
}

/// A non-success answer, with Twilio's `message` when the body has one.
async fn status_error(response: reqwest::Response) -> TwilioError {
    let status = response.status().as_u16();
    let message = read_capped(response, MAX_ERROR_BODY)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<ErrorResource>(&b).ok())
        .and_then(|e| e.message)
        .map(|m| m[..m.floor_char_boundary(200)].to_owned())
        .unwrap_or_default();
    TwilioError::Status { status, message }
}

/// The body, refused as soon as it is over `limit` bytes (announced or received).
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Bytes, TwilioError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(TwilioError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > limit {
            return Err(TwilioError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const RECORDING: &str = "RE0123456789abcdef0123456789abcdef";

    fn client(api_url: &str) -> TwilioClient {
        TwilioClient::new(&TwilioRestConfig {
            account_sid: Some(ACCOUNT.to_owned()),
            auth_token: Some(Secret::new("token")),
            api_url: PublicUrl::parse("TWILIO_API_URL", api_url).unwrap(),
            ..TwilioRestConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn only_this_apis_address_of_the_same_recording_is_a_recording_url() {
        let c = client("https://api.twilio.com");
        let good =
            format!("https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING}");
        assert!(c.is_recording_url(&good, ACCOUNT, RECORDING));
        assert!(c.is_recording_url(
            &good.replace("api.twilio.com", "api.twilio.com:443"),
            ACCOUNT,
            RECORDING
        ));
        let other_sid = RECORDING.replace("RE0", "RE1");
        for bad in [
            good.replace("api.twilio.com", "evil.example.com"),
            good.replace("api.twilio.com", "api.twilio.com.evil.example.com"),
            good.replace("api.twilio.com", "api.twilio.com:8443"),
            good.replace("https:", "http:"),
            good.replace("https://", "https://user:pw@"),
            format!("{good}?x=1"),
            format!("{good}#f"),
            format!("{good}/extra"),
            good.replace("2010-04-01", "2008-08-01"),
            good.replace(RECORDING, &other_sid),
            "not a url".to_owned(),
        ] {
            assert!(!c.is_recording_url(&bad, ACCOUNT, RECORDING), "{bad}");
        }
        assert!(!c.is_recording_url(&good, ACCOUNT, &other_sid));
        let other_account = ACCOUNT.replace("AC0", "AC1");
        assert!(!c.is_recording_url(&good, &other_account, RECORDING));
    }

    #[test]
    fn outbound_call_points_twilio_at_the_voice_webhook_with_its_parameters() {
        let public = PublicUrl::parse("PUBLIC_URL", "https://voice.example.com").unwrap();
        let call = Outbound {
            to: " +15550002222 ".to_owned(),
            from: None,
            params: [("lead".to_owned(), "a b&c".to_owned())].into(),
        }
        .to_new_call(&public, Some("+15550001111"))
        .unwrap();
        assert_eq!(call.to, "+15550002222");
        assert_eq!(call.from, "+15550001111");
        assert_eq!(
            call.url,
            "https://voice.example.com/webhook/incoming_call?p.lead=a+b%26c"
        );
        assert_eq!(
            call.status_callback.as_deref(),
            Some("https://voice.example.com/webhook/call_status")
        );
        let bare = Outbound {
            to: "client:alice".to_owned(),
            from: Some("+15550003333".to_owned()),
            ..Outbound::default()
        }
        .to_new_call(&public, None)
        .unwrap();
        assert_eq!(bare.url, "https://voice.example.com/webhook/incoming_call");
        assert_eq!(bare.from, "+15550003333");
    }

    #[test]
    fn bad_outbound_requests_name_what_is_wrong() {
        let public = PublicUrl::parse("PUBLIC_URL", "https://voice.example.com").unwrap();
        let ask = |to: &str, from: Option<&str>, params: &[(&str, &str)]| {
            Outbound {
                to: to.to_owned(),
                from: from.map(str::to_owned),
                params: params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }
            .to_new_call(&public, None)
        };
        assert_eq!(
            ask("555", Some("+15550001111"), &[])
                .unwrap_err()
                .to_string(),
            "to must be an E.164 number (+ and 8 to 15 digits), a sip: or a client: address: got \"555\""
        );
        assert_eq!(ask("+15550002222", None, &[]), Err(OutboundError::NoFrom));
        assert!(matches!(
            ask("+15550002222", Some("x"), &[]),
            Err(OutboundError::Address { name: "from", .. })
        ));
        for name in ["callSid", "streamToken", "direction", "a b", ""] {
            assert_eq!(
                ask("+15550002222", Some("+15550001111"), &[(name, "v")]),
                Err(OutboundError::Param {
                    name: name.to_owned()
                }),
                "{name}"
            );
        }
        let long = "v".repeat(MAX_PARAM_VALUE + 1);
        assert!(ask("+15550002222", Some("+15550001111"), &[("k", &long)]).is_err());
        let many: Vec<(String, String)> = (0..=MAX_PARAMS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            ask("+15550002222", Some("+15550001111"), &many),
            Err(OutboundError::TooManyParams { count: 17 })
        );
    }

    #[test]
    fn retryable_errors_are_network_errors_server_errors_429_and_404() {
        let status = |status| TwilioError::Status {
            status,
            message: String::new(),
        };
        assert!(TwilioError::Http("x".into()).retryable());
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(status(404).retryable());
        assert!(!status(401).retryable());
        assert!(!status(302).retryable());
        assert!(!TwilioError::TooLarge { limit: 1 }.retryable());
    }
}
