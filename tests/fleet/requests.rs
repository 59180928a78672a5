//! What is sent to the fleet, and how its answers are read: plain `GET`s, callbacks signed
//! as Twilio signs them (through the load balancer until both instances have answered one),
//! calls placed the way Twilio places them, and the parameters of a recording callback.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use handset_sim::{self as sim, CallOutcome, CallPlan};
use http_body_util::Full;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::support::fakes::MediaServer;
use crate::support::{Reply, try_send, twilio_sign};
use crate::{ACCOUNT, IDS, TOKEN};

/// `GET url`, or why not.
pub(crate) async fn get(url: &str) -> Result<Reply, String> {
    try_send(
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// The instance that answered (`X-Handset-Instance`).
pub(crate) fn instance_of(reply: &Reply) -> String {
    reply
        .headers
        .get("x-handset-instance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Handset-Instance header: {reply:?}"))
        .to_owned()
}

/// `prefix` and 32 random hex digits: a Twilio SID no earlier run used.
pub(crate) fn new_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

impl Fleet {
    /// POSTs `params` to `path` at `base` (the load balancer's or an instance's origin),
    /// signed as Twilio signs it: over the public URL.
    pub(crate) async fn post_signed(
        &self,
        base: &str,
        path: &str,
        params: &[(&str, String)],
    ) -> Reply {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let signature = twilio_sign(TOKEN, &self.lb_url(path), &pairs);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter().copied())
            .finish();
        let request = http::Request::post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        try_send(request)
            .await
            .unwrap_or_else(|e| panic!("POST {base}{path}: {e}"))
    }

    /// The same signed callback through the load balancer until both instances have answered
    /// it (round robin: twice). Every answer must be a success.
    pub(crate) async fn deliver_to_both(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Vec<Reply> {
        let mut replies = Vec::new();
        let mut answered = BTreeSet::new();
        while answered.len() < IDS.len() {
            assert!(
                replies.len() < 6,
                "{path}: six deliveries through the load balancer all landed on {answered:?}"
            );
            let reply = self.post_signed(&self.lb_url(""), path, params).await;
            assert!(
                (200..300).contains(&reply.status),
                "{path}: {} {}",
                reply.status,
                reply.body
            );
            answered.insert(instance_of(&reply));
            replies.push(reply);
        }
        replies
    }

    /// Places a call through the load balancer as Twilio does: the signed voice webhook, then
    /// (in a task) the signed Media Stream to the `<Stream url>` of its TwiML, which is the load
    /// balancer too; returns once the stream has started on some instance.
    pub(crate) async fn place_call(&self, audio: Arc<Vec<i16>>, duration: Duration) -> Call {
        let call_sid = new_sid("CA");
        let params = [
            ("AccountSid", ACCOUNT.to_owned()),
            ("ApiVersion", "2010-04-01".to_owned()),
            ("CallSid", call_sid.clone()),
            ("CallStatus", "ringing".to_owned()),
            ("Direction", "inbound".to_owned()),
            ("From", "+15550001111".to_owned()),
            ("To", "+15550002222".to_owned()),
        ];
        let reply = self
            .post_signed(&self.lb_url(""), "/webhook/incoming_call", &params)
            .await;
        assert_eq!(reply.status, 200, "voice webhook: {}", reply.body);
        let webhook = instance_of(&reply);
        let target = sim::parse_twiml(&reply.body).expect("TwiML with <Connect><Stream>");
        assert_eq!(
            target.url,
            self.lb_url("/ws/twilio-media").replace("http", "ws")
        );
        let mut plan = CallPlan::new(self.lb_url("/webhook/incoming_call"));
        plan.auth_token = Some(TOKEN.to_owned());
        plan.call_sid.clone_from(&call_sid);
        plan.audio = audio;
        plan.duration = duration;
        let mut task = tokio::spawn(async move { sim::run_stream(&plan, &target).await });
        let deadline = Instant::now() + Duration::from_secs(15);
        let record = loop {
            if let Some(record) = self.store.call(&call_sid).await.unwrap() {
                break record;
            }
            if task.is_finished() {
                panic!(
                    "call {call_sid}: the stream ended before it started: {:?}",
                    (&mut task).await
                );
            }
            assert!(
                Instant::now() < deadline,
                "call {call_sid}: no stream started within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Call {
            call_sid,
            webhook,
            stream: record.instance,
            task,
        }
    }
}

/// A call placed through the load balancer whose stream is running.
pub(crate) struct Call {
    pub(crate) call_sid: String,
    /// The instance that answered the voice webhook.
    pub(crate) webhook: String,
    /// The instance the stream runs on.
    pub(crate) stream: String,
    task: JoinHandle<Result<CallOutcome, sim::SimError>>,
}

impl Call {
    /// Waits for the simulated call to end (its plan's duration, then `stop`).
    pub(crate) async fn finish(self) -> CallOutcome {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the call ends")
            .unwrap()
            .unwrap_or_else(|e| panic!("call {}: {e}", self.call_sid))
    }
}

/// A recording callback's parameters for a recording served by `media`.
pub(crate) fn recording_params(media: &MediaServer, sid: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", ACCOUNT.to_owned()),
        ("CallSid", new_sid("CA")),
        ("RecordingSid", sid.to_owned()),
        (
            "RecordingUrl",
            format!("{}{}", media.base, recording_path(sid)),
        ),
        ("RecordingDuration", "1".to_owned()),
        ("RecordingStatus", "completed".to_owned()),
    ]
}

/// Where Twilio serves recording `sid` (without the `.wav` Handset appends).
pub(crate) fn recording_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/{sid}")
}
